"""``python -m bench``: run the benchmark, write JSON, a chart and docs/performance.md.

Run from the repository root. ``--quick`` is the few-seconds smoke run the test suite
uses (and writes bench/results/quick.json, never the docs); ``--list`` shows every
server and why one would be skipped; ``--render PATH`` redraws chart and docs from a
saved JSON without measuring anything.

Order of work: for each workload, for each repeat, every server once. Interleaving the
servers inside a repeat spreads slow drifts (another job on the machine, thermal state)
over all of them instead of charging them to whichever server ran during the drift.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .build import BuildError
from .chart import draw_chart
from .loadgen import LoadgenError
from .machine import describe_machine, load_average
from .progress import Progress
from .report import (
    CONCURRENCY_BEGIN,
    CONCURRENCY_END,
    derive,
    has_main_section,
    relative_link,
    render_concurrency,
    render_markdown,
    update_docs,
    write_json,
)
from .servers import (
    BASELINE,
    CEILING,
    SERVERS,
    SERVERS_BY_NAME,
    ServerError,
    ServerProcess,
    unavailable_reason,
)
from .workloads import QUICK, WORKLOADS, Settings, Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_PATH = REPO_ROOT / "docs" / "performance.md"
DEFAULT_WORKLOADS = ("pingpong", "churn", "bulk", "idle", "http", "prefork_scaling", "pool_memory")
QUICK_WORKLOADS = ("pingpong", "churn", "bulk", "idle", "prefork_scaling", "pool_memory")
QUICK_SERVERS = ("stdlib.ThreadingTCPServer", "sockserve.ThreadingTCPServer", "c.epoll")
GROUPS = {spec.name: spec.group for spec in SERVERS}
#: What one run costs beyond its measured duration: process start, warm-up, teardown.
RUN_OVERHEAD_S = 1.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: few peers, 1 repeat")
    parser.add_argument("--workloads", help=f"comma list from {', '.join(WORKLOADS)}")
    parser.add_argument("--servers", help="comma list of names or globs, e.g. 'sockserve.*'")
    parser.add_argument("--repeats", type=int, help="runs per server and workload (default 3)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 0.5)")
    parser.add_argument("--conns", type=int, help="ping-pong/churn connections (default 16)")
    parser.add_argument("--size", type=int, help="message bytes (default 64)")
    parser.add_argument("--idle-conns", type=int, help="idle connections held (default 10000)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for servers (0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="core for load (1)")
    parser.add_argument("--results", type=Path, help="JSON (default bench/results/latest.json)")
    parser.add_argument("--chart", type=Path, help="PNG path (default: beside the JSON)")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--docs", type=Path, help=f"Markdown to update (default {DOCS_PATH})")
    parser.add_argument("--no-docs", action="store_true", help="leave the docs alone")
    parser.add_argument("--list", action="store_true", help="list servers and exit")
    parser.add_argument("--render", type=Path, help="re-render chart and docs from this JSON")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="does a rerun agree? AFTER's medians against BEFORE's ranges, as Markdown",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def build_settings(args: argparse.Namespace) -> tuple[Settings, int]:
    settings = QUICK if args.quick else Settings()
    overrides = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "conns": args.conns,
        "size": args.size,
        "idle_conns": args.idle_conns,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    usable = os.sched_getaffinity(0)
    if {args.server_cpu, args.loadgen_cpu} <= usable and args.server_cpu != args.loadgen_cpu:
        settings = replace(
            settings, server_cores=(args.server_cpu,), loadgen_cores=(args.loadgen_cpu,)
        )
    else:  # one core, or cores we may not use: run unpinned and say so in the report
        settings = replace(settings, server_cores=None, loadgen_cores=None)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    return settings, max(1, repeats)


def select_servers(patterns: str | None, quick: bool) -> list[str]:
    """The chosen servers, plus each chosen protocol's baseline and ceiling."""
    wanted = patterns.split(",") if patterns else (list(QUICK_SERVERS) if quick else ["*"])
    chosen = [s for s in SERVERS if any(fnmatch.fnmatchcase(s.name, p) for p in wanted)]
    protocols = {spec.protocol for spec in chosen if not spec.only_in}
    extra = {BASELINE[p] for p in protocols} | {CEILING[p] for p in protocols}
    return [s.name for s in SERVERS if s in chosen or s.name in extra]


def workload_servers(workload: Workload, patterns: str | None, quick: bool) -> list[str]:
    """The servers one workload runs, in registry order.

    A workload with a server list of its own (``Workload.servers``) runs those, narrowed
    to ``--servers`` when given; the others run the chosen servers of their protocol.
    Servers meant for some workloads only (``ServerSpec.only_in``) stay out of the rest.
    """
    if workload.servers:
        own = (workload.quick_servers or workload.servers) if quick else workload.servers
        wanted = patterns.split(",") if patterns else list(own)
        names = [
            spec.name
            for spec in SERVERS
            if any(fnmatch.fnmatchcase(spec.name, p) for p in wanted)
            and any(fnmatch.fnmatchcase(spec.name, p) for p in workload.servers)
        ]
    else:
        names = select_servers(patterns, quick)
    return [
        name
        for name in names
        if SERVERS_BY_NAME[name].protocol == workload.protocol
        and (not SERVERS_BY_NAME[name].only_in or workload.name in SERVERS_BY_NAME[name].only_in)
    ]


def list_servers() -> None:
    for spec in SERVERS:
        reason = unavailable_reason(spec)
        status = f"skipped: {reason}" if reason else "available"
        print(f"{spec.name:36} {spec.protocol:5} {status}")


@dataclass
class Plan:
    """What a run will do: (workload, servers) pairs, and what it skips and why."""

    work: list[tuple[str, list[str]]]
    skipped_servers: dict[str, str]
    skipped_workloads: dict[str, str]


def make_plan(args: argparse.Namespace) -> Plan:
    names = args.workloads.split(",") if args.workloads else None
    names = names or list(QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS)
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    plan = Plan([], {}, {})
    reasons: dict[str, str | None] = {}
    for name in names:
        workload = WORKLOADS[name]
        reason = workload.needs()
        servers = []
        for server in workload_servers(workload, args.servers, args.quick):
            if server not in reasons:
                reasons[server] = unavailable_reason(SERVERS_BY_NAME[server])
            why = reasons[server]
            if why:
                plan.skipped_servers[server] = why
            else:
                servers.append(server)
        if reason:
            plan.skipped_workloads[name] = reason
        elif servers:
            plan.work.append((name, servers))
    return plan


def measure_all(
    plan: Plan, settings: Settings, repeats: int, progress: Progress
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every repeat of every workload: per workload and server, its runs and failures.

    Repeat *k* of everything runs before repeat *k+1* of anything, so each figure's
    repeats are spread over the whole run, minutes apart: its range then covers the
    machine's drift during the run (CPU frequency, neighbours), not just the noise of a
    few seconds, and a rerun an hour later lands inside it far more often. Each run is
    tagged with its repeat, so a figure can be divided by the C server's figure of the
    same repeat (``report.add_ratios``).
    """
    entries = {
        name: {
            server: {"runs": [], "failures": [], "note": SERVERS_BY_NAME[server].note}
            for server in servers
        }
        for name, servers in plan.work
    }
    for repeat in range(repeats):
        for name, servers in plan.work:
            for server in servers:
                progress.step(f"{name} {server} #{repeat + 1}")
                measure_once(name, server, entries[name][server], settings, repeat, progress)
    return entries


def measure_once(
    name: str,
    server: str,
    entry: dict[str, Any],
    settings: Settings,
    repeat: int,
    progress: Progress,
) -> None:
    """One run of ``server`` under workload ``name``, appended to ``entry``."""
    if entry.get("not_repeated"):
        return
    workload = WORKLOADS[name]
    spec = SERVERS_BY_NAME[server]
    placed = workload.layout(spec, settings)
    try:
        with ServerProcess(spec, cores=placed.server_cores, host=placed.host) as process:
            measurement = workload.run(process, placed)
    except (ServerError, LoadgenError, BuildError, OSError) as exc:
        entry["failures"].append(f"failed: {exc}")
        entry["not_repeated"] = "not repeated after a failure"
        progress.note(f"bench: {name} {server}: {exc}")
        return
    entry["runs"].append({**measurement.to_json(), "repeat": repeat})
    if measurement.rate == 0:
        # A server that served nothing will serve nothing again: save the time.
        entry["not_repeated"] = "served nothing, so not repeated"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    settings, repeats = build_settings(args)
    plan = make_plan(args)
    total_runs = repeats * sum(len(servers) for _, servers in plan.work)
    per_run = settings.duration_s + settings.warmup_s + RUN_OVERHEAD_S
    estimate = sum(
        repeats * len(servers) * (per_run + WORKLOADS[name].extra_s(settings))
        for name, servers in plan.work
    )
    progress = Progress(total_runs)
    progress.note(
        f"bench: {total_runs} runs, about {estimate / 60:.1f} min "
        f"(idle runs may take up to {settings.connect_timeout_s:.0f} s more each to connect)"
    )
    for name, reason in {**plan.skipped_servers, **plan.skipped_workloads}.items():
        progress.note(f"bench: skipping {name}: {reason}")
    results: dict[str, Any] = {
        "schema": 1,
        "command": " ".join(["python -m bench", *args.argv]),
        "started_at": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": describe_machine(),
        "load_average": {"start": load_average()},
        "settings": {**asdict(settings), "repeats": repeats},
        "baseline": BASELINE,
        "ceiling": CEILING,
        "groups": GROUPS,
        "skipped_servers": plan.skipped_servers,
        "skipped_workloads": plan.skipped_workloads,
        "workloads": {},
    }
    started = time.monotonic()
    measured = measure_all(plan, settings, repeats, progress)
    for name, _ in plan.work:
        workload = WORKLOADS[name]
        results["workloads"][name] = {
            "protocol": workload.protocol,
            "unit": workload.unit,
            "cpu_unit": workload.cpu_unit,
            "table": workload.table,
            "description": workload.describe(settings),
            "servers": measured[name],
        }
    progress.done()
    results["elapsed_s"] = time.monotonic() - started
    results["load_average"]["end"] = load_average()
    derive(results)
    return results


def publish(results: dict[str, Any], args: argparse.Namespace, results_path: Path) -> None:
    """Write the chart and the docs section for ``results``; print where they went."""
    chart_link = None
    if not args.no_chart and has_main_section(results):
        chart_path = args.chart or results_path.with_suffix(".png")
        why_not = draw_chart(results, results.get("groups", GROUPS), chart_path)
        if why_not:
            print(f"bench: {why_not}", file=sys.stderr)
        else:
            print(f"bench: chart written to {chart_path}", file=sys.stderr)
            docs = args.docs or DOCS_PATH
            chart_link = relative_link(chart_path.resolve(), docs.resolve())
    write_docs = not args.no_docs and (args.docs is not None or not args.quick)
    if write_docs:
        docs = args.docs or DOCS_PATH
        # Each section is rewritten only by a run that measured its workloads.
        if has_main_section(results):
            update_docs(docs, render_markdown(results, chart_link))
        concurrency = render_concurrency(results)
        if concurrency:
            update_docs(docs, concurrency, CONCURRENCY_BEGIN, CONCURRENCY_END)
        print(f"bench: results written into {docs}", file=sys.stderr)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.list:
        list_servers()
        return
    if args.compare:
        from .compare import compare

        print(compare(*args.compare))
        return
    if args.render:
        import json

        results = json.loads(args.render.read_text())
        results.setdefault("groups", GROUPS)  # older files lack it
        derive(results)
        publish(results, args, args.render)
        return
    results = run_benchmark(args)
    results_path = args.results or RESULTS_DIR / default_results_name(args, results)
    write_json(results, results_path)
    print(f"bench: results written to {results_path}", file=sys.stderr)
    publish(results, args, results_path)
    print(render_markdown(results, None))
    concurrency = render_concurrency(results)
    if concurrency:
        print(concurrency)


def default_results_name(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """quick.json for --quick; concurrency.json for a run of only the pre-fork scaling and
    pool-memory workloads (so it never replaces a full run's latest.json); else latest.json.
    """
    if args.quick:
        return "quick.json"
    return "latest.json" if has_main_section(results) else "concurrency.json"


if __name__ == "__main__":
    main(sys.argv[1:])
