"""Does a rerun agree with a run? ``python -m bench --compare BEFORE.json AFTER.json``.

For every server and workload measured in both, it asks whether the rerun's median
rate lies within the first run's range (min-max over its repeats), and prints a table
with the verdict and the ratio of the medians. A figure outside the range is not
necessarily a regression: a noisy machine widens ranges run to run, and threaded
servers in ping-pong are bimodal. The table says which figures to distrust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def compare(before_path: Path, after_path: Path) -> str:
    before = json.loads(before_path.read_text())
    after = json.loads(after_path.read_text())
    lines = [
        f"# {after_path} against {before_path}",
        "",
        "| workload | server | before: median (range) | after: median (range) "
        "| after / before | after's median in before's range |",
        "|---|---|---:|---:|---:|---|",
    ]
    inside = total = 0
    for workload, entry in before["workloads"].items():
        rerun = after["workloads"].get(workload)
        if rerun is None:
            continue
        for server, measured in entry["servers"].items():
            first = measured.get("summary")
            second = (rerun["servers"].get(server) or {}).get("summary")
            if not first or not second or not first.get("rate"):
                continue
            total += 1
            agrees = first["rate_min"] <= second["rate"] <= first["rate_max"]
            inside += agrees
            lines.append(
                f"| {workload} | {server} | {_figure(first)} | {_figure(second)} "
                f"| {second['rate'] / first['rate']:.2f}× | {'yes' if agrees else 'no'} |"
            )
    lines += ["", f"{inside} of {total} rerun medians lie within the first run's range."]
    return "\n".join(lines)


def _figure(summary: dict[str, Any]) -> str:
    return f"{summary['rate']:,.0f} ({summary['rate_min']:,.0f}–{summary['rate_max']:,.0f})"
