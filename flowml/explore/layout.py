"""Graph layout by Graphviz's `dot`: DOT text in, SVG out, no layout code of our own.

The layout program is `graphviz-pure` (a port of Graphviz's command line, a wheel of the
`flowml[explore]` extra: nothing to install beside pip), found next to this Python first, or a
system Graphviz's `dot`. All the graphs of a page are laid out by one run of it; equal DOT texts
(a phase that changed nothing) are laid out once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from ..errors import FlowError

# The font the program measures labels with: graphviz-pure has metrics only for the fonts it
# bundles, of which Cousine is the monospace one (metric-compatible with Courier New, like
# Liberation Mono, which the page falls back to); a system dot asks fontconfig.
FONT = {"graphviz-pure": "Cousine", "dot": "monospace"}


def find_dot() -> tuple[str, str]:
    """(path, kind) of the layout program: graphviz-pure, else a system Graphviz's dot."""
    here = os.path.dirname(sys.executable)
    for kind in ("graphviz-pure", "dot"):
        exe = shutil.which(kind, path=here) or shutil.which(kind)
        if exe:
            return exe, kind
    raise FlowError("the IR explorer lays graphs out with Graphviz, and neither graphviz-pure nor dot was "
                    "found: pip install 'flowml[explore]' (or install Graphviz)")


def layout(dots: list[str]) -> list[str]:
    """The SVG of each DOT graph (an `<svg>` element, without the XML prolog)."""
    unique = list(dict.fromkeys(dots))
    if not unique:
        return []
    exe, kind = find_dot()
    try:
        done = subprocess.run([exe, "-Tsvg", f"-Nfontname={FONT[kind]}"], input="\n".join(unique),
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FlowError(f"the graph layout program {exe} failed to run: {e}") from None
    # (one SVG document per graph, each starting with its XML prolog)
    svgs = [part[part.index("<svg"):].strip() for part in done.stdout.split("<?xml")[1:]]
    if done.returncode != 0 or len(svgs) != len(unique):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise FlowError(f"the graph layout program {exe} failed (exit {done.returncode}): {last}")
    by_text = dict(zip(unique, map(_slim, svgs)))
    return [by_text[d] for d in dots]


def _slim(svg: str) -> str:
    """The SVG without what the page does not use (comments, edge tooltips, the font family the
    page's style sets): a page holds dozens of graphs."""
    svg = re.sub(r"<!-- .*? -->\n", "", svg)
    svg = re.sub(r'(<g id="edge\d+" class="edge">)\n<title>[^<]*</title>', r"\1", svg)
    return svg.replace(' font-family="Cousine"', "").replace(' font-family="monospace"', "")
