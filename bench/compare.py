"""Does a rerun agree with a run? ``python -m bench --compare BEFORE.json AFTER.json``.

Per server and workload measured in both, three checks of the rerun's median rate:

* **rerun 95%** (the agreement the report promises): inside the first run's prediction
  interval for a rerun (``reproducibility.py``); about 1 figure in 20 may miss by design;
* **range**: inside the first run's min-max over its repeats (narrower: three samples
  under-state the machine's noise, so about half miss; shown for comparison);
* **share of C**: the rerun's median share of the C server's rate (each repeat divided by
  the C server's rate in the same repeat) inside the first run's range of that share.

Both files are re-derived with today's maths first, so older results compare too.
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
        derive(results)
    lines = [
        f"# {after_path} against {before_path}",
        "",
        "| workload | server | before: median (range) | before: rerun 95% | after: median "
        "| after / before | in rerun 95% | in range | share of C: before (range) → after "
        "| share in range |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    counts = {"interval": [0, 0], "range": [0, 0], "share": [0, 0]}
    for workload, entry in before["workloads"].items():
        rerun = after["workloads"].get(workload)
        if rerun is None:
            continue
        for server, measured in entry["servers"].items():
            second_entry = rerun["servers"].get(server) or {}
            first, second = measured.get("summary"), second_entry.get("summary")
            if not first or not second or not first.get("rate"):
                continue
            rate = second["rate"]
            verdicts = {"range": first["rate_min"] <= rate <= first["rate_max"]}
            interval = measured.get("rerun_interval")
            interval_text = "–"
            if interval:
                verdicts["interval"] = interval["low"] <= rate <= interval["high"]
                interval_text = f"{interval['low']:,.0f}–{interval['high']:,.0f}"
            share_text = "–"
            first_share = measured.get("share_of_ceiling")
            second_share = second_entry.get("share_of_ceiling")
            if first_share and second_share:
                verdicts["share"] = (
                    first_share["min"] <= second_share["median"] <= first_share["max"]
                )
                share_text = (
                    f"{first_share['median']:.3f} ({first_share['min']:.3f}–"
                    f"{first_share['max']:.3f}) → {second_share['median']:.3f}"
                )
            for check, agrees in verdicts.items():
                counts[check][0] += agrees
                counts[check][1] += 1
            lines.append(
                f"| {workload} | {server} | {_figure(first)} | {interval_text} "
                f"| {rate:,.0f} | {rate / first['rate']:.2f}× | {_yes(verdicts, 'interval')} "
                f"| {_yes(verdicts, 'range')} | {share_text} | {_yes(verdicts, 'share')} |"
            )
    lines.append("")
    for check, what in (
        ("interval", "within the first run's rerun 95% interval"),
        ("range", "within the first run's min–max range"),
        ("share", "with their share of the C server's rate within the first run's range"),
    ):
        inside, total = counts[check]
        lines.append(f"- {check}: {inside} of {total} rerun medians lie {what}.")
    return "\n".join(lines)


def _yes(verdicts: dict[str, bool], check: str) -> str:
    if check not in verdicts:
        return "–"
    return "yes" if verdicts[check] else "no"


def _figure(summary: dict[str, Any]) -> str:
    return f"{summary['rate']:,.0f} ({summary['rate_min']:,.0f}–{summary['rate_max']:,.0f})"
