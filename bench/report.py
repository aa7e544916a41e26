"""Results as a rich table (terminal), Markdown and JSON: one row per metric, one column per
peer, each cell the median and its ratio to the best column (1× is the fastest)."""

from __future__ import annotations

import json
import math
import os

from . import config

PEER_ORDER = ["numpy", "numexpr", "numba", "pytensor", "pytensor.numba", "jax", "torch",
              "torch.compile"]


def ordered_columns(results) -> list[str]:
    cols = list(results["columns"])
    return sorted(cols, key=lambda c: (PEER_ORDER.index(c) if c in PEER_ORDER else 99, c))


def fmt(v: float, unit: str = "") -> str:
    if unit == "":
        return f"{v:.1e}"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _value(results, col, key):
    m = results["columns"][col]["metrics"].get(key)
    return None if m is None or m.get("value") is None else m["value"]


def ratios(results, metric) -> tuple[str | None, dict[str, float]]:
    """The best column for a metric, and every column's ratio to it (>= 1; 1 is the best)."""
    vals = {c: v for c in results["columns"] if (v := _value(results, c, metric.key)) is not None
            and v > 0}
    if not vals:
        return None, {}
    pick = min if metric.better == "lower" else max
    best = pick(vals, key=vals.get)
    if metric.better == "lower":
        return best, {c: v / vals[best] for c, v in vals.items()}
    return best, {c: vals[best] / v for c, v in vals.items()}


class Cells:
    """Cell texts of the main table, with numbered footnotes for errors and notes."""

    def __init__(self, results):
        self.results, self.notes = results, []
        self.columns = ordered_columns(results)
        self.rows = [m for m in config.METRICS if self._row_used(m)]

    def _row_used(self, metric):
        wl = metric.key.split(".")[0].split("@")[0]
        return any(metric.key in c["metrics"] or wl in c["errors"]
                   for c in self.results["columns"].values())

    def footnote(self, text: str) -> int:
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def cell(self, metric, col, ratio_of) -> tuple[str, str]:
        """(text, style) for one cell; style is '' or 'best' or 'error'."""
        c = self.results["columns"][col]
        wl = metric.key.split(".")[0].split("@")[0]
        m = c["metrics"].get(metric.key)
        if m is None:
            if wl in c["errors"]:
                return f"error [{self.footnote(f'{col} {wl}: ' + c['errors'][wl])}]", "error"
            return "—", ""
        if m.get("value") is None:
            return f"n/a [{self.footnote(m.get('note', 'no value'))}]", ""
        text = fmt(m["value"], metric.unit)
        if m.get("note"):
            text = f"~{text} [{self.footnote(f'{col} {metric.key}: ' + m['note'])}]" \
                if "extrapolated" in m["note"] else f"{text} [{self.footnote(m['note'])}]"
        r = ratio_of.get(col)
        if metric.ratio and r is not None:
            text += f" ({r:.2f}×)" if r < 9.95 else f" ({r:.0f}×)"
        return text, "best" if metric.ratio and r is not None and r == 1.0 else ""

    def table(self):
        """[(row label, [(text, style) per column], fastest column)]"""
        out = []
        for metric in self.rows:
            best, ratio_of = ratios(self.results, metric) if metric.ratio else (None, {})
            label = f"{metric.label} ({metric.unit})" if metric.unit else metric.label
            out.append((label, [self.cell(metric, c, ratio_of) for c in self.columns], best or ""))
        return out


def flowml_summary(results) -> list[str]:
    """One line per flowml column: its ratio per metric, and their geometric mean over the
    run-time metrics (W6, build time, is left out: numpy's "build" is nothing)."""
    lines = []
    for col in ordered_columns(results):
        if not col.startswith("flowml"):
            continue
        parts, logs = [], []
        for metric in config.METRICS:
            if not metric.ratio:
                continue
            best, ratio_of = ratios(results, metric)
            if col in ratio_of:
                parts.append(f"{metric.key} {ratio_of[col]:.2f}× (best: {best})")
                if not metric.key.startswith("W6"):
                    logs.append(math.log(ratio_of[col]))
        if logs:
            gm = math.exp(sum(logs) / len(logs))
            lines.append(f"{col}: geometric mean {gm:.2f}× the fastest over {len(logs)} run-time "
                         f"metrics (W6 left out); " + "; ".join(parts))
    return lines


def machine_rows(results) -> list[tuple[str, str]]:
    ms = results.get("machine", {}).get("metrics", {})
    rows = []
    for metric in config.MACHINE_METRICS:
        for key in sorted(k for k in ms if k.split("@")[0] == metric.key):
            n = int(key.split("@")[1].rstrip("t")) if "@" in key else 1
            rows.append((f"{metric.label}, {n} thread{'s' if n > 1 else ''} ({metric.unit})",
                         fmt(ms[key]["value"], metric.unit)))
    return rows


def _header_lines(results) -> list[str]:
    meta = results["meta"]
    load = "/".join(f"{x:.1f}" for x in meta.get("loadavg_start", ())[:1] + meta.get("loadavg", ())[:1])
    lines = [f"{meta['mode']} run, {meta['cpu']} ({meta['cores']} cores), "
             f"python {meta['python']}, {meta['wall_s']} s; load average at start/end {load}",
             "Cells: median (ratio to the best column; 1× is the fastest). "
             "~ marks a value extrapolated from fewer steps."]
    if meta.get("loadavg_start", (0,))[0] > 0.5 * meta["cores"]:
        lines.append(f"warning: the machine was busy (load average {load} on {meta['cores']} cores): "
                     "timings are noisy, multi-threaded ones especially")
    lines += [f"not run: {k}: {v}" for k, v in results.get("unavailable", {}).items()]
    for col, c in results["columns"].items():
        lines += [f"note: {col}: {n}" for n in c.get("notes", [])]
    return lines


def render_rich(results, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cells = Cells(results)
    table = Table(title="flowml benchmark", show_lines=False)
    table.add_column("metric", style="bold")
    for col in cells.columns:
        table.add_column(escape(col), justify="right")
    table.add_column("fastest")
    styles = {"best": "bold green", "error": "red", "": ""}
    for label, row, best in cells.table():
        table.add_row(label, *[f"[{styles[s]}]{escape(t)}[/]" if s else escape(t) for t, s in row],
                      escape(best))
    for line in _header_lines(results):
        console.print(line, markup=False, highlight=False)
    console.print(table)
    for i, note in enumerate(cells.notes, 1):
        console.print(f"[{i}] {note}", markup=False, highlight=False)
    mrows = machine_rows(results)
    if mrows:
        mt = Table(title="machine context")
        mt.add_column("measure")
        mt.add_column("value", justify="right")
        for r in mrows:
            mt.add_row(*map(escape, r))
        console.print(mt)
    for line in flowml_summary(results):
        console.print(line, markup=False, highlight=False)


def to_markdown(results) -> str:
    cells = Cells(results)
    out = ["# flowml benchmark", ""] + [f"- {ln}" for ln in _header_lines(results)] + [""]
    out.append("| metric | " + " | ".join(cells.columns) + " | fastest |")
    out.append("|---|" + "---:|" * len(cells.columns) + "---|")
    for label, row, best in cells.table():
        texts = [f"**{t}**" if s == "best" else t for t, s in row]
        out.append(f"| {label} | " + " | ".join(texts) + f" | {best} |")
    out.append("")
    out += [f"{i}. {note.replace(chr(10), ' ')}" for i, note in enumerate(cells.notes, 1)]
    mrows = machine_rows(results)
    if mrows:
        out += ["", "| machine | value |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in mrows]
    summary = flowml_summary(results)
    if summary:
        out += [""] + [f"- {ln}" for ln in summary]
    versions = {col: c.get("versions", {}) for col, c in results["columns"].items()}
    if results.get("machine"):
        versions["machine"] = results["machine"].get("versions", {})
    out += ["", "Versions: " + "; ".join(
        f"{col}: " + ", ".join(f"{k} {v}" for k, v in vs.items()) for col, vs in versions.items() if vs)]
    return "\n".join(out) + "\n"


def write(results, outdir: str, stamp: str) -> tuple[str, str]:
    os.makedirs(outdir, exist_ok=True)
    jpath, mpath = (os.path.join(outdir, f"{stamp}.{ext}") for ext in ("json", "md"))
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    with open(mpath, "w") as f:
        f.write(to_markdown(results))
    return jpath, mpath
