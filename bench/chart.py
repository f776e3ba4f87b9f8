"""Draw the results as one PNG: a bar panel per workload plus server CPU per request.

matplotlib is imported here and only here, lazily: the harness runs without it and
simply says that the chart was skipped. Bars are medians, whiskers the min-max range;
the scale is linear on purpose, so a 20× gap looks like one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Bar colours by server group, so a family reads as one across panels.
GROUP_COLOURS = {
    "stdlib": "#8c8c8c",
    "sockserve": "#1f77b4",
    "asyncio": "#2ca02c",
    "uvloop": "#98df8a",
    "gevent": "#9467bd",
    "c": "#d62728",
}


def _panel(axes: Any, title: str, rows: list[tuple[str, float, float, float, str]]) -> None:
    names = [row[0] for row in rows]
    medians = [row[1] for row in rows]
    low = [row[1] - row[2] for row in rows]
    high = [row[3] - row[1] for row in rows]
    colours = [GROUP_COLOURS.get(row[4], "#444444") for row in rows]
    positions = range(len(rows))
    spread = any(low) or any(high)
    axes.barh(
        positions,
        medians,
        height=0.7 if len(rows) > 6 else 0.4,
        xerr=[low, high] if spread else None,
        color=colours,
        capsize=2,
    )
    for position, median in zip(positions, medians, strict=True):
        if median == 0:  # an empty bar reads as "missing": say what happened
            axes.text(0, position, " served nothing", va="center", fontsize=6, color="#a00")
    axes.set_yticks(list(positions), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_title(title, fontsize=9)
    axes.tick_params(axis="x", labelsize=7)
    axes.grid(axis="x", alpha=0.3)


def draw_chart(results: dict[str, Any], groups: dict[str, str], path: Path) -> str | None:
    """Write the PNG; returns None, or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display here, and none is needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    panels = []
    for name, workload in results["workloads"].items():
        if workload.get("table") == "pool_memory":
            continue  # its rate is mostly the hold time: its figures are memory and threads
        rows = [
            (server, s["rate"], s["rate_min"], s["rate_max"], groups.get(server, ""))
            for server, entry in workload["servers"].items()
            if (s := entry["summary"]) is not None
        ]
        if rows:
            panels.append((f"{name} ({workload['unit']}, higher is better)", rows))
    pingpong = results["workloads"].get("pingpong")
    if pingpong:
        rows = [
            (server, cpu, cpu, cpu, groups.get(server, ""))
            for server, entry in pingpong["servers"].items()
            if entry["summary"] and (cpu := entry["summary"]["cpu_us_per_unit"]) is not None
        ]
        if rows:
            panels.append(("server µs CPU per ping-pong request (lower is better)", rows))
    if not panels:
        return "no figures to draw"
    columns = 2
    lines = (len(panels) + columns - 1) // columns
    tallest = max(len(rows) for _, rows in panels)
    figure, grid = plt.subplots(
        lines, columns, figsize=(11, 0.22 * tallest * lines + 1.2 * lines), squeeze=False
    )
    for axes, (title, rows) in zip(grid.flat, panels, strict=False):
        _panel(axes, title, rows)
    for axes in list(grid.flat)[len(panels) :]:
        axes.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)
    _shrink(path)
    return None


def _shrink(path: Path) -> None:
    """Re-save as a 64-colour palette PNG: a third of the bytes for a committed chart."""
    from PIL import Image  # pillow comes with matplotlib

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)
