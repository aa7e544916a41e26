// The flowml IR explorer's page script (flowml/explore). Everything it shows is in the JSON
// of #flowml-data, written by flowml/explore/__init__.py: the source files, and per fn its
// phases (nodes with provenance, rule counts, removed nodes, the memory plan), the native code
// of its kernels and a profile; the SVG of each phase's graph was laid out by Graphviz.
(function () {
  "use strict";
  const page = JSON.parse(document.getElementById("flowml-data").textContent);
  const $ = (id) => document.getElementById(id);
  const state = { fn: 0, phase: 0, node: null, zoom: 1, size: null };
  let nodes = new Map(); // k -> node of the phase shown

  // el("a", {class: "x", "data-k": 3}, "text", child...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") e.className = value;
      else e.setAttribute(key, value);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  const fn = () => page.fns[state.fn];
  const phase = () => fn().phases[state.phase];

  // ------------------------------------------------------------------ source

  function renderSource() {
    const box = $("source");
    page.sources.forEach((src, f) => {
      if (page.sources.length > 1) box.appendChild(el("div", { class: "pane-title" }, src.file));
      src.lines.forEach((text, i) => {
        const row = el("div", { class: "src-line", id: `src-${f}-${i + 1}`, "data-file": f, "data-line": i + 1 },
          el("span", { class: "ln" }, String(i + 1)), text);
        row.addEventListener("click", () => showLine(f, i + 1, true));
        box.appendChild(row);
      });
    });
    $("source-title").textContent = page.sources.length ? page.sources.map((s) => s.file).join(", ") : "no source text";
  }

  // Highlight a source line; `markNodes`: also mark the nodes of the graph shown that came from it.
  function showLine(f, line, markNodes) {
    document.querySelectorAll(".src-line.hl").forEach((r) => r.classList.remove("hl"));
    const row = $(`src-${f}-${line}`);
    if (row) {
      row.classList.add("hl");
      row.scrollIntoView({ block: "nearest" });
    }
    if (markNodes) {
      document.querySelectorAll("#graph .node.on-line").forEach((g) => g.classList.remove("on-line"));
      document.querySelectorAll(`#graph .node[data-file="${f}"][data-line="${line}"]`).forEach((g) => g.classList.add("on-line"));
    }
  }

  function srcLink(loc) {
    const a = el("a", { class: "src-link", href: "#", "data-file": loc[0], "data-line": loc[1] }, loc[3]);
    a.addEventListener("click", (e) => {
      e.preventDefault();
      if (loc[0] !== null) showLine(loc[0], loc[1], true);
    });
    return a;
  }

  // ------------------------------------------------------------------ fns and phases

  function renderFns() {
    const nav = $("fns");
    page.fns.forEach((f, i) => {
      const b = el("button", { "data-fn": f.name, title: f.signature }, "fn " + f.name);
      b.addEventListener("click", () => showFn(i));
      nav.appendChild(b);
    });
  }

  function unchanged(p) {  // (the memory phase changes no node: its plan is what it made)
    return !p.nodes.some((n) => n.rules) && !(p.removed && p.removed.length) && !p.memory;
  }

  function showFn(i) {
    state.fn = i;
    document.querySelectorAll("#fns button").forEach((b, j) => b.classList.toggle("active", j === i));
    $("signature").textContent = fn().signature;
    const nav = $("phases");
    nav.textContent = "";
    fn().phases.forEach((p, j) => {
      if (j) nav.appendChild(el("span", { class: "arrow" }, "→"));
      const b = el("button", { class: "phase-tab" + (j && unchanged(p) ? " unchanged" : ""), "data-phase": p.phase, title: p.doc },
        p.phase, el("span", { class: "count" }, String(p.nodes.length)));
      b.addEventListener("click", () => showPhase(j));
      nav.appendChild(b);
    });
    showPhase(fn().phases.length - 1);
  }

  function profileTimes(f) {
    const times = new Map();
    for (const r of f.profile || []) {
      if (r.k !== null) times.set(r.k, (times.get(r.k) || 0) + r.total_s);
    }
    return times;
  }

  // white -> orange -> dark orange, t in [0, 1]
  function heat(t) {
    const stops = [[255, 245, 235], [253, 141, 60], [217, 72, 1]];
    const s = t < 0.5 ? 0 : 1, u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
    const c = stops[s].map((v, i) => Math.round(v + (stops[s + 1][i] - v) * u));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function showPhase(j) {
    state.phase = j;
    state.node = null;
    const p = phase();
    nodes = new Map(p.nodes.map((n) => [n.k, n]));
    document.querySelectorAll("#phases .phase-tab").forEach((b, i) => b.classList.toggle("active", i === j));
    $("phase-doc").textContent = `after ${p.phase}: ${p.doc}`;
    document.querySelector("#legend .key-hot").hidden = !fn().profile;
    const box = $("graph");
    box.innerHTML = page.svgs[p.svg];
    const svg = box.querySelector("svg");
    state.size = [parseFloat(svg.getAttribute("width")), parseFloat(svg.getAttribute("height"))];
    const times = p.final ? profileTimes(fn()) : new Map();
    const most = Math.max(0, ...times.values());
    svg.querySelectorAll("g.node").forEach((g) => {
      const title = g.querySelector("title");
      const m = /^n(\d+)$/.exec(title.textContent);
      if (!m) {
        g.classList.add("port"); // an output or an update
        return;
      }
      const k = Number(m[1]), n = nodes.get(k);
      g.setAttribute("data-node", k);
      title.textContent = n.ir;
      if (n.leaf) g.classList.add("leaf");
      if (n.op === "fused") g.classList.add("fused");
      if (n.rules) g.classList.add("new");
      if (n.loc && n.loc[0] !== null) {
        g.setAttribute("data-file", n.loc[0]);
        g.setAttribute("data-line", n.loc[1]);
      }
      if (times.has(k) && most > 0) {
        g.classList.add("timed");
        g.querySelectorAll("polygon, ellipse").forEach((s) => { s.style.fill = heat(times.get(k) / most); });
      }
      g.addEventListener("click", (e) => {
        e.stopPropagation();
        select(k);
      });
    });
    document.querySelectorAll(".src-line").forEach((r) => r.classList.remove("has-nodes", "hl"));
    for (const n of p.nodes) {
      const row = n.loc && n.loc[0] !== null ? $(`src-${n.loc[0]}-${n.loc[1]}`) : null;
      if (row) row.classList.add("has-nodes");
    }
    fitZoom();
    renderChanges();
    renderMemory();
    renderProfile();
    $("tab-node").textContent = "";
    $("tab-node").appendChild(el("p", { class: "muted" }, "Click a node of the graph (or a node number anywhere) to see it here."));
  }

  // ------------------------------------------------------------------ zoom

  function applyZoom() {
    const svg = $("graph").querySelector("svg");
    if (!svg || !state.size) return;
    svg.setAttribute("width", `${state.size[0] * state.zoom}pt`);
    svg.setAttribute("height", `${state.size[1] * state.zoom}pt`);
  }

  // (the pane's width is read once and on resizes: reading it after each new graph would lay the
  // whole page out again, once per phase shown)
  let paneWidth = 0;
  window.addEventListener("resize", () => { paneWidth = $("graph").clientWidth; });

  function fitZoom() {
    if (!paneWidth) paneWidth = $("graph").clientWidth;
    const width = paneWidth - 16;
    // (at most 1; at least 0.7, below which the labels are too small to read: then scroll)
    state.zoom = state.size && width > 0 ? Math.max(0.7, Math.min(1, width / (state.size[0] * 4 / 3))) : 1;
    applyZoom();
  }

  // ------------------------------------------------------------------ nodes

  function nodeLink(k, phaseIndex) {
    const j = phaseIndex === undefined ? state.phase : phaseIndex;
    const a = el("a", { class: "node-link", href: "#", "data-k": k, "data-phase": fn().phases[j].phase }, `%${k}`);
    a.addEventListener("click", (e) => {
      e.preventDefault();
      if (j !== state.phase) showPhase(j);
      select(k);
    });
    return a;
  }

  function links(ks, phaseIndex) {
    const span = el("span");
    ks.forEach((k, i) => {
      if (i) span.appendChild(document.createTextNode(", "));
      span.appendChild(nodeLink(k, phaseIndex));
    });
    return span;
  }

  function select(k) {
    const n = nodes.get(k);
    if (!n) return;
    state.node = k;
    document.querySelectorAll("#graph .node.selected, #graph .node.neighbour").forEach((g) => g.classList.remove("selected", "neighbour"));
    const g = document.querySelector(`#graph .node[data-node="${k}"]`);
    if (g) {
      g.classList.add("selected");
      g.scrollIntoView({ block: "center", inline: "center" });
    }
    for (const o of n.operands.concat(n.users)) {
      const h = document.querySelector(`#graph .node[data-node="${o}"]`);
      if (h && o !== k) h.classList.add("neighbour");
    }
    if (n.loc && n.loc[0] !== null) showLine(n.loc[0], n.loc[1], false);
    renderNode(n);
    setTab("node");
  }

  function renderNode(n) {
    const box = $("tab-node");
    box.textContent = "";
    const f = fn(), p = phase();
    box.appendChild(el("h2", {}, `%${n.k} ${n.op}` + (n.name ? `  (${n.name})` : "")));
    box.appendChild(el("p", {}, el("b", {}, "type "), el("code", {}, n.type)));
    if (n.loc) {
      const quote = n.loc[0] !== null ? page.sources[n.loc[0]].lines[n.loc[1] - 1] : null;
      box.appendChild(el("p", {}, el("b", {}, "source "), srcLink(n.loc)));
      if (quote) box.appendChild(el("pre", { class: "quote" }, quote.trim()));
    } else {
      box.appendChild(el("p", { class: "muted" }, "no source location"));
    }
    box.appendChild(el("pre", { class: "ir" }, n.ir));
    if (state.phase > 0) {
      const before = f.phases[state.phase - 1].phase;
      if (n.rules) {
        const rules = el("p", {}, el("b", {}, "built by "));
        n.rules.forEach((r) => rules.appendChild(el("span", { class: "rule" }, r)));
        box.appendChild(rules);
        if (n.from.length) box.appendChild(el("p", {}, `in place of ${n.from.length === 1 ? "node" : "nodes"} `, links(n.from, state.phase - 1), ` of ${before}`));
      } else if (n.from.length === 1) {
        box.appendChild(el("p", { class: "muted" }, "carried over from ", links(n.from, state.phase - 1), ` of ${before}`));
      } else if (n.from.length > 1) {
        box.appendChild(el("p", {}, "merges the equal nodes ", links(n.from, state.phase - 1), ` of ${before}`));
      }
    }
    if (n.operands.length) box.appendChild(el("p", {}, el("b", {}, "operands "), links(n.operands)));
    if (n.users.length) box.appendChild(el("p", {}, el("b", {}, "used by "), links(n.users)));
    if (n.formula) {
      box.appendChild(el("h3", {}, "formula"));
      box.appendChild(el("pre", { class: "formula" }, n.formula));
    }
    if (p.memory) {
      const b = p.memory.assign[String(n.k)];
      if (b !== undefined) box.appendChild(el("p", {}, el("b", {}, "buffer "), `#${b} (${p.memory.buffers[b].type})`));
      for (const [param, k] of p.memory.inplace) if (k === n.k) box.appendChild(el("p", {}, el("b", {}, "in place "), `written straight into param ${param}`));
      for (const [v, src] of p.memory.views) if (v === n.k) box.appendChild(el("p", {}, el("b", {}, "view "), "shares the buffer of ", nodeLink(src)));
    }
    if (p.final) {
      const plan = f.plan && f.plan[String(n.k)];
      if (plan) box.appendChild(el("p", {}, el("b", {}, `runs as (${f.backend}) `), plan));
      const code = f.code && f.code[String(n.k)];
      if (code) {
        for (const [kind, text] of Object.entries(code)) {
          const cls = "code code-" + kind.split(" ")[0].toLowerCase();
          box.appendChild(el("details", { open: kind === Object.keys(code)[0] ? "" : null }, el("summary", {}, kind), el("pre", { class: cls }, text)));
        }
      }
      const total = (f.profile || []).reduce((s, r) => s + r.total_s, 0);
      for (const r of (f.profile || []).filter((q) => q.k === n.k)) {
        const calls = r.calls === undefined ? "" : ` in ${r.calls} call${r.calls === 1 ? "" : "s"}`;
        const rate = [r.gbps ? `${r.gbps.toPrecision(3)} GB/s` : "", r.gflops ? `${r.gflops.toPrecision(3)} GFLOP/s` : ""].filter((x) => x).join(", ");
        box.appendChild(el("p", { class: "time" }, el("b", {}, "time "), `${fmtTime(r.total_s)}${calls}` +
          (total > 0 ? `, ${(100 * r.total_s / total).toFixed(1)}% of the fn` : "") + (rate ? ` (${rate})` : "")));
      }
    }
    if (n.op === "scan" && p.bodies) {
      box.appendChild(el("h3", {}, "loop bodies"));
      box.appendChild(el("pre", {}, p.bodies));
    }
  }

  function fmtTime(s) {
    if (s >= 1) return `${s.toFixed(3)} s`;
    if (s >= 1e-3) return `${(s * 1e3).toFixed(3)} ms`;
    return `${(s * 1e6).toFixed(1)} µs`;
  }

  // ------------------------------------------------------------------ side tabs

  function setTab(name) {
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === `tab-${name}`));
  }

  function renderChanges() {
    const box = $("tab-changes");
    box.textContent = "";
    const f = fn(), p = phase(), j = state.phase;
    box.appendChild(el("h2", {}, `after ${p.phase}`));
    box.appendChild(el("p", { class: "muted" }, p.doc));
    if (j === 0) {
      box.appendChild(el("p", {}, `${p.nodes.length} nodes: the graph as built, before the optimizer's first phase.`));
      return;
    }
    const before = f.phases[j - 1];
    box.appendChild(el("p", {}, `${p.nodes.length} nodes (${before.nodes.length} after ${before.phase}).`));
    if (p.stats.length) {
      box.appendChild(el("h3", {}, "what it did"));
      const table = el("table", {}, el("tr", {}, el("th", {}, "rule, or what it counts"), el("th", { class: "num" }, "times")));
      for (const [rule, count] of p.stats) table.appendChild(el("tr", {}, el("td", {}, el("span", { class: "rule" }, rule)), el("td", { class: "num" }, String(count))));
      box.appendChild(table);
    }
    const built = p.nodes.filter((n) => n.rules);
    box.appendChild(el("h3", {}, `built in this phase (${built.length})`));
    if (!built.length) box.appendChild(el("p", { class: "muted" }, "none: every node is one of the phase before"));
    const groups = new Map();
    for (const n of built) {
      const key = n.rules.join(" ⟶ ");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(n);
    }
    for (const [key, ns] of groups) {
      const from = [...new Set(ns.flatMap((n) => n.from))].sort((a, b) => a - b);
      box.appendChild(el("p", {}, ...ns[0].rules.map((r) => el("span", { class: "rule" }, r)), el("br"),
        links(ns.map((n) => n.k)), from.length ? " in place of " : "", from.length ? links(from, j - 1) : null));
    }
    const removed = p.removed || [];
    box.appendChild(el("h3", {}, `gone from ${before.phase} (${removed.length})`));
    if (!removed.length) box.appendChild(el("p", { class: "muted" }, "none"));
    for (const r of removed) {
      const row = el("p", {}, nodeLink(r.k, j - 1), ` ${r.op}: `);
      if (r.to.length) row.append("replaced by ", links(r.to), " (", ...(r.rules || []).map((x) => el("span", { class: "rule" }, x)), ")");
      else row.append("dropped: nothing needs it any more");
      box.appendChild(row);
    }
  }

  function renderMemory() {
    const box = $("tab-memory");
    box.textContent = "";
    const f = fn(), p = phase();
    if (!p.memory) {
      const planned = f.phases.findIndex((q) => q.memory);
      box.appendChild(el("p", { class: "muted" }, "The memory phase plans the buffers of the fully optimized graph."));
      if (planned >= 0) {
        const b = el("button", {}, "show the memory phase");
        b.addEventListener("click", () => { showPhase(planned); setTab("memory"); });
        box.appendChild(b);
      }
      return;
    }
    const m = p.memory;
    box.appendChild(el("h2", {}, `${m.buffers.length} buffers`));
    box.appendChild(el("p", { class: "muted" }, "Each computed value lives in a buffer from the node that computes it to its last reader; a later value of the same size reuses it."));
    const table = el("table", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "type"), el("th", { class: "num" }, "bytes"), el("th", {}, "holds, in turn")));
    for (const b of m.buffers) {
      table.appendChild(el("tr", { class: "buffer" }, el("td", {}, String(b.b)), el("td", {}, el("code", {}, b.type)),
        el("td", { class: "num" }, b.bytes === null ? `${b.itemsize} per element` : String(b.bytes)), el("td", {}, links(b.nodes))));
    }
    box.appendChild(table);
    box.appendChild(el("h3", {}, `in-place param updates (${m.inplace.length})`));
    for (const [param, k] of m.inplace) box.appendChild(el("p", {}, `${param} ← `, nodeLink(k)));
    if (m.views.length) {
      box.appendChild(el("h3", {}, `views (${m.views.length})`));
      for (const [v, src] of m.views) box.appendChild(el("p", {}, nodeLink(v), " shares the buffer of ", nodeLink(src)));
    }
  }

  function renderProfile() {
    const box = $("tab-profile");
    box.textContent = "";
    const f = fn();
    if (!f.profile) {
      box.appendChild(el("p", { class: "muted" }, "No profile of this fn. Give the page one with --profile-json PROFILE.json (the profiler's JSON): the nodes of the optimized graph are then coloured by their time."));
      return;
    }
    const rows = f.profile.slice().sort((a, b) => b.total_s - a.total_s);
    const total = rows.reduce((s, r) => s + r.total_s, 0);
    const final = f.phases.findIndex((q) => q.final);
    box.appendChild(el("h2", {}, `profile: ${fmtTime(total)}`));
    const table = el("table", {}, el("tr", {}, el("th", {}, "node"), el("th", {}, "step"), el("th", { class: "num" }, "calls"), el("th", { class: "num" }, "total"), el("th", { class: "num" }, "share")));
    for (const r of rows) {
      const step = r.kind === "boundary" ? "call boundary" : `${r.op || ""}${r.name ? ` (${r.name})` : ""}${r.detail ? `: ${r.detail}` : ""}`;
      table.appendChild(el("tr", {}, el("td", {}, r.k === null ? "—" : nodeLink(r.k, final)), el("td", {}, step),
        el("td", { class: "num" }, r.calls === undefined ? "" : String(r.calls)), el("td", { class: "num" }, fmtTime(r.total_s)),
        el("td", { class: "num" }, total > 0 ? `${(100 * r.total_s / total).toFixed(1)}%` : "")));
    }
    box.appendChild(table);
  }

  // ------------------------------------------------------------------ start

  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => setTab(b.dataset.tab)));
  $("zoom-in").addEventListener("click", () => { state.zoom *= 1.25; applyZoom(); });
  $("zoom-out").addEventListener("click", () => { state.zoom /= 1.25; applyZoom(); });
  $("zoom-fit").addEventListener("click", fitZoom);
  renderSource();
  renderFns();
  if (page.fns.length) showFn(0);
  setTab("changes");
  window.flowmlExplorer = { page, state, showFn, showPhase, select, setTab };
})();
