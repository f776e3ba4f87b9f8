"""Does a rerun agree with a run? ``python -m bench --compare BEFORE.json AFTER.json``.

Two checks per server and workload measured in both:

* **rate**: the rerun's median rate lies within the first run's range (min-max over its
  repeats, which are spread over the whole run, so the range covers the machine's drift
  during a run);
* **share of C**: the rerun's median share of the C server's rate (each repeat divided
  by the C server's rate in the same repeat) lies within the first run's range of that
  share. Drift that moves a whole run (the C server too) cancels out here, which is why
  ratios are what to carry from one machine or one hour to another.

A figure outside both is worth a look: a noisy neighbour during one repeat, or a server
whose speed really is bimodal (threaded servers in ping-pong, see docs/performance.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .report import derive


def compare(before_path: Path, after_path: Path) -> str:
    before = json.loads(before_path.read_text())
    after = json.loads(after_path.read_text())
    for results in (before, after):
        derive(results)  # today's maths, also for results saved before a figure existed
    lines = [
        f"# {after_path} against {before_path}",
        "",
        "| workload | server | before: median (range) | after: median (range) "
        "| after / before | rate in range | share of C: before (range) → after | share in range |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    rate_inside = share_inside = either_inside = total = shares = 0
    for workload, entry in before["workloads"].items():
        rerun = after["workloads"].get(workload)
        if rerun is None:
            continue
        for server, measured in entry["servers"].items():
            second_entry = rerun["servers"].get(server) or {}
            first, second = measured.get("summary"), second_entry.get("summary")
            if not first or not second or not first.get("rate"):
                continue
            total += 1
            rate_agrees = first["rate_min"] <= second["rate"] <= first["rate_max"]
            rate_inside += rate_agrees
            share_text, share_verdict = "–", "–"
            share_agrees = False
            first_share = measured.get("share_of_ceiling")
            second_share = second_entry.get("share_of_ceiling")
            if first_share and second_share:
                shares += 1
                share_agrees = first_share["min"] <= second_share["median"] <= first_share["max"]
                share_inside += share_agrees
                share_text = (
                    f"{first_share['median']:.3f} ({first_share['min']:.3f}–"
                    f"{first_share['max']:.3f}) → {second_share['median']:.3f}"
                )
                share_verdict = "yes" if share_agrees else "no"
            either_inside += rate_agrees or share_agrees
            lines.append(
                f"| {workload} | {server} | {_figure(first)} | {_figure(second)} "
                f"| {second['rate'] / first['rate']:.2f}× | {'yes' if rate_agrees else 'no'} "
                f"| {share_text} | {share_verdict} |"
            )
    lines += [
        "",
        f"- rate: {rate_inside} of {total} rerun medians lie within the first run's range;",
        f"- share of the C server's rate: {share_inside} of {shares} do;",
        f"- either: {either_inside} of {total}.",
    ]
    return "\n".join(lines)


def _figure(summary: dict[str, Any]) -> str:
    return f"{summary['rate']:,.0f} ({summary['rate_min']:,.0f}–{summary['rate_max']:,.0f})"
