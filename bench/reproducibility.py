"""Where a rerun's figure should land: a prediction interval for each median rate.

Why not the min-max range: three repeats on a shared machine give a range that a rerun's
median misses about half the time (45-46 of 81 figures in two pairs of full runs here),
because the noise is larger than three samples show: the C server itself measured 137k
to 193k ping-pong requests/s in one run's repeats, with 2.0 TCP segments per request in
each (not a protocol effect: the machine).

The noise is the machine's, so every server of a workload shares it: the spread is pooled
over them. Per workload, ``s`` is the pooled standard deviation of log(rate) around each
server's mean, with ``sum(n_i - 1)`` degrees of freedom (36 for 18 servers × 3 repeats).
A rerun's median and this run's median, each over ``n`` repeats, then differ in log by
about ``s * sqrt(2 * c_n)`` (``c_n * s**2`` is the variance of a median of ``n``
normal samples), and the interval is this run's median times ``exp(± t * that)`` with
Student's ``t`` for the pooled degrees of freedom.

Checked on two pairs of full runs (each run against the other, four comparisons): a
rerun's median fell inside the 95% interval for 72-76 of 81 figures. Ranges grow with the
workload's noise: ping-pong and churn about ±15%, bulk (one connection) about ±50%.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: The interval's nominal coverage.
LEVEL = 0.95

#: Two-sided 95% quantiles of Student's t by degrees of freedom (a table: no SciPy here).
#: A df between rows uses the row below it, which is conservative (wider).
_T_975 = (
    (1, 12.71),
    (2, 4.30),
    (3, 3.18),
    (4, 2.78),
    (5, 2.57),
    (6, 2.45),
    (8, 2.31),
    (10, 2.23),
    (15, 2.13),
    (20, 2.09),
    (30, 2.04),
    (40, 2.02),
    (60, 2.00),
    (120, 1.98),
)

#: Variance of the median of n standard normal samples, for small n; π/(2n) beyond.
_MEDIAN_VARIANCE = {1: 1.0, 2: 0.5, 3: 0.4487, 4: 0.3433, 5: 0.2868}


def t_quantile(df: int) -> float:
    value = _T_975[0][1]
    for row_df, quantile in _T_975:
        if df >= row_df:
            value = quantile
    return value


def median_variance(n: int) -> float:
    return _MEDIAN_VARIANCE.get(n, math.pi / (2 * n))


def pooled_log_spread(workload: dict[str, Any]) -> tuple[float, int] | None:
    """``(s, df)`` over every server of the workload with two or more positive rates."""
    squares = 0.0
    df = 0
    for entry in workload["servers"].values():
        logs = [math.log(run["rate"]) for run in entry.get("runs", []) if run["rate"] > 0]
        if len(logs) < 2:
            continue
        mean = statistics.fmean(logs)
        squares += sum((value - mean) ** 2 for value in logs)
        df += len(logs) - 1
    if df == 0:
        return None
    return math.sqrt(squares / df), df


def add_rerun_intervals(workload: dict[str, Any]) -> None:
    """Fill ``rerun_interval`` ({low, high, level}, or None) for every server."""
    pooled = pooled_log_spread(workload)
    for entry in workload["servers"].values():
        summary = entry.get("summary")
        entry["rerun_interval"] = None
        if pooled is None or not summary or not summary["rate"]:
            continue
        spread, df = pooled
        half_width = t_quantile(df) * spread * math.sqrt(2 * median_variance(summary["runs"]))
        entry["rerun_interval"] = {
            "low": summary["rate"] * math.exp(-half_width),
            "high": summary["rate"] * math.exp(half_width),
            "level": LEVEL,
        }
