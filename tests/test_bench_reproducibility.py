"""The rerun interval the benchmark report promises (``bench/reproducibility.py``).

Pure arithmetic on synthetic runs, no servers: it must collapse when there is no noise,
widen with noise, and, for noise of the kind it assumes, hold a rerun's median about 95%
of the time (checked by simulation with a fixed seed).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reproducibility import (  # noqa: E402
    add_rerun_intervals,
    median_variance,
    pooled_log_spread,
    t_quantile,
)


def _workload(rates_by_server: dict[str, list[float]]) -> dict[str, Any]:
    servers = {}
    for name, rates in rates_by_server.items():
        servers[name] = {
            "runs": [{"rate": rate} for rate in rates],
            "summary": {"rate": statistics.median(rates), "runs": len(rates)},
        }
    return {"servers": servers}


def test_no_noise_means_the_interval_is_the_median() -> None:
    workload = _workload({"a": [100.0, 100.0, 100.0], "b": [50.0, 50.0, 50.0]})
    add_rerun_intervals(workload)
    interval = workload["servers"]["a"]["rerun_interval"]
    assert interval["low"] == interval["high"] == 100.0
    assert interval["level"] == 0.95


def test_the_interval_widens_with_the_workload_s_noise() -> None:
    quiet = _workload({"a": [99.0, 100.0, 101.0], "b": [49.0, 50.0, 51.0]})
    noisy = _workload({"a": [80.0, 100.0, 120.0], "b": [49.0, 50.0, 51.0]})
    for workload in (quiet, noisy):
        add_rerun_intervals(workload)
    quiet_b = quiet["servers"]["b"]["rerun_interval"]
    noisy_b = noisy["servers"]["b"]["rerun_interval"]
    # b is as steady in both, but the noise is the machine's: pooled over the servers
    assert noisy_b["high"] - noisy_b["low"] > 3 * (quiet_b["high"] - quiet_b["low"])
    assert quiet_b["low"] < 50.0 < quiet_b["high"]


def test_single_runs_give_no_interval() -> None:
    workload = _workload({"a": [100.0], "b": [50.0]})
    assert pooled_log_spread(workload) is None
    add_rerun_intervals(workload)
    assert workload["servers"]["a"]["rerun_interval"] is None


def test_tables_are_sane() -> None:
    quantiles = [t_quantile(df) for df in range(1, 200)]
    assert quantiles == sorted(quantiles, reverse=True)
    assert t_quantile(2) == 4.30
    assert 1.96 < t_quantile(1000) < 2.0
    assert median_variance(1) == 1.0
    assert median_variance(3) < median_variance(2) < median_variance(1)
    assert math.isclose(median_variance(100), math.pi / 200)


def test_a_rerun_lands_inside_about_95_percent_of_the_time() -> None:
    """Log-normal noise (sd 10%), 18 servers × 3 repeats, as in a full run."""
    rng = random.Random(20261125)
    true_rates = [rng.uniform(1e3, 2e5) for _ in range(18)]

    def one_run() -> dict[str, Any]:
        return _workload(
            {
                f"s{index}": [rate * math.exp(rng.gauss(0, 0.1)) for _ in range(3)]
                for index, rate in enumerate(true_rates)
            }
        )

    inside = total = 0
    for _ in range(300):
        first, rerun = one_run(), one_run()
        add_rerun_intervals(first)
        for name, entry in first["servers"].items():
            interval = entry["rerun_interval"]
            total += 1
            rerun_median = rerun["servers"][name]["summary"]["rate"]
            inside += interval["low"] <= rerun_median <= interval["high"]
    assert 0.93 <= inside / total <= 0.98, inside / total
