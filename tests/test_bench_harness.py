"""The benchmark harness runs end to end: ``python -m bench --quick`` produces figures.

It checks that the harness worked — JSON written, every selected server measured with a
nonzero rate — and never how fast anything was: speed lives in bench/ and
docs/performance.md, not in asserts (a shared CI machine would make them flaky).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The quick run takes a few seconds; the margin covers compiling the C parts and a
#: loaded machine (the suite may run beside other jobs on two cores).
QUICK_RUN_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("the harness compiles its load generator and C server: no gcc/cc here")
    out = tmp_path_factory.mktemp("bench")
    results_path = out / "quick.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--results",
            str(results_path),
            "--no-chart",
            "--no-docs",
        ],
        cwd=REPO_ROOT,
        # A fresh cache, so the run also proves the C parts compile from source.
        env={**os.environ, "SOCKSERVE_BENCH_CACHE": str(out / "cache")},
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert results_path.exists(), done.stderr
    return {
        "json": json.loads(results_path.read_text()),
        "stdout": done.stdout,
        "path": results_path,
    }


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_quick_run_measures_every_selected_server(quick_results: dict) -> None:
    results = quick_results["json"]
    assert results["workloads"], "no workload ran"
    for name, workload in results["workloads"].items():
        assert workload["servers"], f"{name}: no server ran"
        for server, entry in workload["servers"].items():
            assert not entry["failures"], f"{name} {server}: {entry['failures']}"
            summary = entry["summary"]
            assert summary is not None, f"{name} {server}: no figures"
            assert summary["rate"] > 0, f"{name} {server}: nothing was served"


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_quick_run_reports_against_both_references(quick_results: dict) -> None:
    results = quick_results["json"]
    pingpong = results["workloads"]["pingpong"]["servers"]
    assert {"stdlib.ThreadingTCPServer", "c.epoll"} <= set(pingpong)
    for entry in pingpong.values():
        assert set(entry["vs_baseline"]) >= {"rate", "cpu_us_per_unit"}
        assert set(entry["vs_ceiling"]) >= {"rate", "cpu_us_per_unit"}
    assert results["machine"]["cores"] >= 1
    assert "<!-- bench:results:begin -->" in quick_results["stdout"]


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_quick_run_measures_prefork_scaling(quick_results: dict) -> None:
    servers = quick_results["json"]["workloads"]["prefork_scaling"]["servers"]
    by_workers = {entry["summary"]["extra"]["workers"]: entry for entry in servers.values()}
    assert 1 in by_workers, servers.keys()
    assert len(by_workers) >= 2, "no run with more than one worker"
    for workers, entry in by_workers.items():
        extra = entry["summary"]["extra"]
        assert len(extra["idle"]["worker_pss_mib"]) == workers
        assert extra["idle"]["master_pss_mib"] > 0
        assert entry["vs_one_worker"]["rate"] > 0
    assert "### prefork_scaling" in quick_results["stdout"]


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_quick_run_measures_pool_memory(quick_results: dict) -> None:
    servers = quick_results["json"]["workloads"]["pool_memory"]["servers"]
    pool = servers["sockserve.ThreadPoolTCPServer"]["summary"]
    extra = pool["extra"]
    assert extra["hold_connected"] == extra["conns"], "not every connection was opened"
    assert extra["served"] == extra["conns"], "the pool did not cycle through every client"
    # The pool's contract, not a speed: threads stay within max_workers plus the main one.
    assert extra["thread_bound"] is not None
    assert extra["peak_threads"] <= extra["thread_bound"] + 2
    assert "### pool_memory" in quick_results["stdout"]


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_compare_says_whether_a_rerun_lies_within_the_ranges(quick_results: dict) -> None:
    path = str(quick_results["path"])
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--compare", path, path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| pingpong |")]
    assert rows, done.stdout
    # A run compared with itself agrees on every check it can make, row by row and in the
    # totals (one quick repeat gives no rerun interval: that check has nothing to count).
    assert all("| 1.00× |" in line for line in rows), done.stdout
    assert not any("| no |" in line for line in rows), done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    total = len([line for line in table if "×" in line])
    assert f"range: {total} of {total} rerun medians lie within" in done.stdout
    assert "interval: 0 of 0 rerun medians" in done.stdout
