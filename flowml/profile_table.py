"""The profiler's table on the terminal (rich): one per profiled fn, with its compile times."""

from __future__ import annotations

import os


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _rate(value) -> str:
    return "" if value is None else f"{value:.3g}"


def _compile_line(info: dict) -> str:
    if not info:
        return ""
    phases = ", ".join(f"{k} {fmt_time(v)}" for k, v in info.get("phases_s", {}).items())
    if info.get("model_cache"):  # (the phases' times are those of the compile that filled it)
        parts = ["from the model cache" + (f" (when first compiled: {phases})" if phases else "")]
    else:
        parts = [f"optimize {fmt_time(info['optimize_s'])}" + (f" ({phases})" if phases else ""),
                 f"backend {fmt_time(info['backend_s'])}"]
    objects = info.get("object_cache") or {}
    if objects:
        parts.append(f"object cache {objects.get('hit', 0)} hit(s), {objects.get('miss', 0)} miss(es)")
    if "profiling_build_s" in info:
        parts.append(f"profiling build {fmt_time(info['profiling_build_s'])}")
    return "compile: " + "; ".join(parts)


def tables(profile):
    """rich renderables: a table per fn of `profile` (a `flowml.profiling.Profile`)."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text
    for fp in profile.functions:
        data = fp.to_json()
        calls = data["calls"]
        title = (f"fn {data['fn']} ({data['file']}, {data['backend']}): {calls} call{'s' if calls != 1 else ''}, "
                 f"{fmt_time(data['total_s'])} in all, {fmt_time(data['total_s'] / max(calls, 1))} a call")
        caption = f"timed by {data['timing']}\n{_compile_line(data['compile'])}"
        table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
        for col, justify in (("step", "left"), ("runs as", "left"), ("calls", "right"), ("total", "right"),
                             ("mean", "right"), ("share", "right"), ("GB/s", "right"), ("GFLOP/s", "right")):
            wraps = col == "runs as"  # (the one column that wraps: the others stay one line)
            table.add_column(col, justify=justify, no_wrap=not wraps, min_width=24 if wraps else None)
        table.add_column("source", no_wrap=True, overflow="ellipsis", max_width=44)
        for r in data["rows"]:
            step = f"{r['id']} {r['op']}" if r["id"] else ("call boundary" if r["kind"] == "boundary" else "(the fn)")
            what = {"host": f"HOST: {r['detail']}", "boundary": ""}.get(r["kind"], r["detail"])
            where = f"{os.path.basename(r['source'].rsplit(':', 1)[0])}" if r["source"] else ""
            source = f"{where}  {r['line']}" if where and r["line"] else where
            share = Text(f"{100 * r['share']:.1f}%", style="bold" if r["share"] >= 0.2 else "")
            table.add_row(Text(step), Text(what), str(r["calls"]), fmt_time(r["total_s"]), fmt_time(r["mean_s"]), share,
                          _rate(r["gbps"]), _rate(r["gflops"]), Text(source))
        yield table
