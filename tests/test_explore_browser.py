"""The IR explorer in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs when they are missing) driven by selenium opens the
page of every example, in one browser session, and checks through the DOM that it loads with no
console error, that every fn and phase shows its graph's nodes linked to their source lines,
and that clicking does what docs/inspect.md says.

`FLOWML_SCREENSHOT=docs/img/explorer_mlp.png python -m pytest tests/test_explore_browser.py`
also saves the screenshot of docs/inspect.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flowml.api import parse_program
from flowml.explore import Explorer, _profile_rows, explore, render

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.flow"))
WINDOW = (1600, 1000)

# Every fn, every phase, by clicking the page's own buttons: what the DOM then shows.
WALK = """
const seen = [];
for (const fb of document.querySelectorAll('#fns button')) {
  fb.click();
  for (const pb of document.querySelectorAll('#phases .phase-tab')) {
    pb.click();
    const graph = document.querySelector('#graph svg');
    seen.push({fn: fb.dataset.fn, phase: pb.dataset.phase, active: pb.classList.contains('active'),
               nodes: graph.querySelectorAll('g.node[data-node]').length,
               located: graph.querySelectorAll('g.node[data-line]').length,
               built: graph.querySelectorAll('g.node.new').length,
               timed: graph.querySelectorAll('g.node.timed').length,
               heading: document.querySelector('#tab-changes h2').textContent});
  }
}
return seen;
"""


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the explorer's browser test needs Chromium and its driver: apt-get install -y chromium "
                    "chromium-driver (.ci/run installs them when they are missing)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _synthetic_profile(data: dict) -> dict:
    """A profile as the profiler's JSON has it (docs/inspect.md, "Profiling"): a time for every
    fused node of the optimized graph, and the call boundary's."""
    fns = []
    for fn in data["fns"]:
        final = next(p for p in fn["phases"] if p["final"])
        rows = [{"id": f"%{n['k']}", "op": "fused", "kind": "native", "detail": f"kernel of %{n['k']}",
                 "total_s": 1e-5 * (1 + n["k"]), "calls": 10} for n in final["nodes"] if n["op"] == "fused"]
        rows.append({"id": None, "op": None, "kind": "boundary", "total_s": 2e-6, "calls": 10})
        fns.append({"fn": fn["name"], "rows": rows})
    return {"flowml_profile": 1, "functions": fns}


def _errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_every_example_opens_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    pages = {}
    for path in EXAMPLES:
        prog = parse_program(path.read_bytes(), f"examples/{path.name}")
        # (the assembly costs a compile of each fn: tests/test_explore.py checks it)
        page = explore(prog, list(prog.functions.values()), asm=False)
        if path.stem == "mlp":  # the page again, with a profile of its optimized graph
            for fn in page.data["fns"]:
                fn["profile"] = _profile_rows(_synthetic_profile(page.data), fn["name"])
            page = Explorer(render(page.data), page.title, page.data)
        out = tmp_path / f"{path.stem}.html"
        page.save(out)
        pages[path.stem] = (out, page.data)
    assert len(pages) >= 10
    driver = _browser()
    try:
        for name, (out, data) in pages.items():
            driver.get(out.as_uri())
            WebDriverWait(driver, 20).until(lambda d: d.execute_script("return !!window.flowmlExplorer"))
            seen = driver.execute_script(WALK)
            expected = [(fn["name"], p["phase"]) for fn in data["fns"] for p in fn["phases"]]
            assert [(s["fn"], s["phase"]) for s in seen] == expected, name
            for s, (fn, p) in zip(seen, ((fn, p) for fn in data["fns"] for p in fn["phases"])):
                where = f"{name}: fn {fn['name']} after {p['phase']}"
                assert s["active"] and s["heading"] == f"after {p['phase']}", where
                assert s["nodes"] == len(p["nodes"]) > 0, where
                assert s["located"] == sum(1 for n in p["nodes"] if n.get("loc", [None])[0] is not None), where
                assert s["built"] == sum(1 for n in p["nodes"] if n.get("rules")), where
                assert s["timed"] == (sum(1 for n in p["nodes"] if n["op"] == "fused") if name == "mlp" and p["final"]
                                      else 0), where
            assert driver.find_elements(By.CSS_SELECTOR, ".src-line"), name
            assert _errors(driver) == [], name
            if name == "mlp":
                _interact(driver, data)
                assert _errors(driver) == [], name
        if os.environ.get("FLOWML_SCREENSHOT"):
            _screenshot(driver, tmp_path, os.environ["FLOWML_SCREENSHOT"])
    finally:
        driver.quit()


def _interact(driver, data) -> None:
    """Clicks on the MLP's page (open), as docs/inspect.md walks a user through them."""
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, '#fns button[data-fn="train"]').click()  # (on its last phase)
    train = data["fns"][0]
    memory = next(p for p in train["phases"] if p["phase"] == "memory")
    (tanh,) = [n for n in memory["nodes"] if n["op"] == "fused" and "tanh" in n["formula"]]
    css = driver.find_element
    # a fused node: its formula, LLVM IR and assembly
    css(By.CSS_SELECTOR, f'#graph g.node[data-node="{tanh["k"]}"]').click()
    assert "selected" in css(By.CSS_SELECTOR, f'#graph g.node[data-node="{tanh["k"]}"]').get_attribute("class")
    assert css(By.CSS_SELECTOR, "#tab-node").is_displayed()
    assert css(By.CSS_SELECTOR, "#tab-node pre.formula").text == tanh["formula"] == "tanh(%7 + %3)"
    assert css(By.CSS_SELECTOR, "#tab-node pre.code-llvm").get_attribute("textContent").startswith("define void @k")
    assert [s.text for s in driver.find_elements(By.CSS_SELECTOR, "#tab-node details summary")] == ["LLVM IR"]
    assert css(By.CSS_SELECTOR, ".src-line.hl").get_attribute("id") == "src-0-16"  # h = tanh(x @ W1 + b1)
    # the profile's times, on the node and as its colour
    assert css(By.CSS_SELECTOR, "#tab-node p.time").text.startswith("time ")
    assert css(By.CSS_SELECTOR, f'#graph g.node[data-node="{tanh["k"]}"] polygon').value_of_css_property("fill") \
        != css(By.CSS_SELECTOR, '#graph g.node.fused:not(.timed) polygon, #graph g.node:not(.leaf):not(.timed) polygon') \
        .value_of_css_property("fill")
    # its source link highlights the line, and marks the nodes that came from it
    css(By.CSS_SELECTOR, "#tab-node a.src-link").click()
    line = css(By.CSS_SELECTOR, ".src-line.hl")
    assert line.get_attribute("id") == "src-0-16" and line.text.endswith("h      = tanh(x @ W1 + b1)")
    on_line = {int(e.get_attribute("data-node")) for e in driver.find_elements(By.CSS_SELECTOR, "#graph g.node.on-line")}
    assert on_line == {n["k"] for n in memory["nodes"] if n.get("loc", [0, 0])[1] == 16} and tanh["k"] in on_line
    # a line of the source pane: the same
    css(By.ID, "src-0-19").click()
    assert css(By.CSS_SELECTOR, ".src-line.hl").get_attribute("id") == "src-0-19"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#graph g.node.on-line")) == \
        sum(1 for n in memory["nodes"] if n.get("loc", [0, 0])[1] == 19) > 0
    # stabilize: the rule that built the cross-entropy, and the node of canonicalize it replaced
    css(By.CSS_SELECTOR, '#phases .phase-tab[data-phase="stabilize"]').click()
    css(By.CSS_SELECTOR, '#tabs button[data-tab="changes"]').click()
    rules = {e.text for e in driver.find_elements(By.CSS_SELECTOR, "#tab-changes .rule")}
    assert "-log(softmax(x))[arange(N), y] -> categorical_crossentropy(x, y)" in rules
    stabilize = next(p for p in train["phases"] if p["phase"] == "stabilize")
    (xent,) = [n for n in stabilize["nodes"] if n["op"] == "categorical_crossentropy"]
    css(By.CSS_SELECTOR, f'#graph g.node[data-node="{xent["k"]}"]').click()
    assert "-log(softmax(x))[arange(N), y] -> categorical_crossentropy(x, y)" in css(By.ID, "tab-node").text
    before = css(By.CSS_SELECTOR, '#tab-node a.node-link[data-phase="canonicalize"]')
    replaced = int(before.get_attribute("data-k"))
    assert replaced in xent["from"]
    before.click()  # to the phase before, that node selected
    assert "active" in css(By.CSS_SELECTOR, '#phases .phase-tab[data-phase="canonicalize"]').get_attribute("class")
    assert "selected" in css(By.CSS_SELECTOR, f'#graph g.node[data-node="{replaced}"]').get_attribute("class")
    # the memory plan's buffers
    css(By.CSS_SELECTOR, '#phases .phase-tab[data-phase="memory"]').click()
    css(By.CSS_SELECTOR, '#tabs button[data-tab="memory"]').click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tab-memory tr.buffer")) == len(memory["memory"]["buffers"])
    # the profile: every row, slowest first
    css(By.CSS_SELECTOR, '#tabs button[data-tab="profile"]').click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tab-profile tr")) == 1 + len(train["profile"])


def _screenshot(driver, tmp_path, path) -> None:
    """docs/img/explorer_mlp.png: the MLP's page as `flowml compile --emit html` writes it, its
    tanh kernel selected."""
    from selenium.webdriver.common.by import By
    prog = parse_program((ROOT / "examples/mlp.flow").read_bytes(), "examples/mlp.flow")
    page = explore(prog, list(prog.functions.values()))
    out = tmp_path / "mlp-screenshot.html"
    page.save(out)
    driver.get(out.as_uri())
    memory = next(p for p in page.data["fns"][0]["phases"] if p["phase"] == "memory")
    (tanh,) = [n for n in memory["nodes"] if n["op"] == "fused" and "tanh" in n["formula"]]
    driver.find_element(By.CSS_SELECTOR, f'#graph g.node[data-node="{tanh["k"]}"]').click()
    driver.save_screenshot(path)
    assert _errors(driver) == []
