"""Turn runs into figures: medians and ranges, ratios, JSON, and Markdown for the docs.

Every figure is a median over the repeats, with the range (min-max) beside the headline
rate, and is also given as a ratio to the stdlib's ThreadingTCPServer and to the C
ceiling measured in the same run: ratios survive a slower or busier machine far better
than absolute figures do. The Markdown goes between two marker comments in
docs/performance.md, so the prose around it is never touched.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from .reproducibility import add_rerun_intervals

MARK_BEGIN = "<!-- bench:results:begin -->"
MARK_END = "<!-- bench:results:end -->"
#: The pre-fork scaling and pool-memory figures have a section of their own, so a run of
#: just those two workloads can refresh them without touching the full run's section.
CONCURRENCY_BEGIN = "<!-- bench:concurrency:begin -->"
CONCURRENCY_END = "<!-- bench:concurrency:end -->"
#: Workloads with their own table, rendered into the concurrency section.
CONCURRENCY_TABLES = ("prefork_scaling", "pool_memory")

CPU_UNIT_SHORT = {"request": "req", "connection": "conn"}

#: Figures also reported as ratios (the rate, and the costs where lower is better).
RATIO_FIGURES = ("rate", "cpu_us_per_unit", "rss_mib", "p50", "p99", "p99.9")


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Median (and range, for the rate) of each figure over the repeats."""
    if not runs:
        return None
    rates = [run["rate"] for run in runs]
    percentiles = sorted({key for run in runs for key in run["latency_us"]})
    return {
        "runs": len(runs),
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "cpu_us_per_unit": _median([run["cpu_us_per_unit"] for run in runs]),
        "server_cpu_share": _median([run["server_cpu_share"] for run in runs]),
        "loadgen_cpu_share": _median([run["loadgen_cpu_share"] for run in runs]),
        "other_cpu_share": _median([run["other_cpu_share"] for run in runs]),
        "rss_mib": _median([run["rss_mib"] for run in runs]),
        "threads": _median([run["threads"] for run in runs]),
        "processes": _median([run["processes"] for run in runs]),
        "errors": sum(run["errors"] for run in runs),
        "stalled_conns": max(run["stalled_conns"] for run in runs),
        **{key: _median([run["latency_us"].get(key) for run in runs]) for key in percentiles},
        "extra": runs[-1]["extra"],
    }


def ratios(summary: dict[str, Any] | None, reference: dict[str, Any] | None) -> dict[str, Any]:
    """``summary[figure] / reference[figure]`` for each of RATIO_FIGURES that both have."""
    if summary is None or reference is None:
        return {}
    found = {}
    for figure in RATIO_FIGURES:
        mine, theirs = summary.get(figure), reference.get(figure)
        if mine is not None and theirs:
            found[figure] = mine / theirs
    return found


def add_ratios(workload: dict[str, Any], baseline: str, ceiling: str) -> None:
    """Fill ``vs_baseline`` and ``vs_ceiling`` for every server of one workload."""
    servers = workload["servers"]
    base = servers.get(baseline, {}).get("summary")
    top = servers.get(ceiling, {}).get("summary")
    ceiling_runs = servers.get(ceiling, {}).get("runs", [])
    for entry in servers.values():
        entry["vs_baseline"] = ratios(entry["summary"], base)
        entry["vs_ceiling"] = ratios(entry["summary"], top)
        entry["share_of_ceiling"] = share_of_ceiling(entry.get("runs", []), ceiling_runs)


def share_of_ceiling(runs: list[dict[str, Any]], ceiling_runs: list[dict[str, Any]]) -> Any:
    """Rate / the C server's rate *in the same repeat*: median and range over repeats.

    The machine's drift moves a whole repeat (the C server's rate too), so this share
    varies less between runs than the rates do. Runs without a ``repeat`` tag (results
    from before it existed) pair by position. None when there is nothing to pair.
    """
    top = {run.get("repeat", index): run["rate"] for index, run in enumerate(ceiling_runs)}
    shares = []
    for index, run in enumerate(runs):
        ceiling_rate = top.get(run.get("repeat", index))
        if ceiling_rate:
            shares.append(run["rate"] / ceiling_rate)
    if not shares:
        return None
    return {"median": statistics.median(shares), "min": min(shares), "max": max(shares)}


#: Server groups that run socketserver's model (the code sockserve replaces or is).
SOCKETSERVER_GROUPS = ("stdlib", "sockserve")


def _fastest(servers: dict[str, Any], names: list[str]) -> tuple[str, dict[str, Any]] | None:
    measured = [(servers[n]["summary"]["rate"], n) for n in names if servers[n]["summary"]]
    if not measured:
        return None
    name = max(measured)[1]
    return name, servers[name]["summary"]


def loadgen_headroom(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload: could the load generator have driven the servers harder?

    Its capacity is the C ceiling's rate divided by the share of its core the load
    generator used there: the rate it would reach on its whole core at that cost per
    request. A server measured well below that capacity, using its whole core itself,
    was the bottleneck of its own run, which is what the figures claim. Compared with
    the fastest Python server of any kind, and the fastest of socketserver's model.
    """
    groups = results.get("groups", {})
    rows = []
    for name, workload in results["workloads"].items():
        if workload.get("table", "standard") != "standard":
            continue
        ceiling = results["ceiling"].get(workload["protocol"])
        servers = workload["servers"]
        top = servers.get(ceiling, {}).get("summary")
        python = [server for server in servers if server != ceiling]
        fastest = _fastest(servers, python)
        if top is None or fastest is None:
            continue
        load_share = top["loadgen_cpu_share"]
        row: dict[str, Any] = {
            "workload": name,
            "ceiling_rate": top["rate"],
            "ceiling_cpu_share": top["server_cpu_share"],
            "ceiling_loadgen_cpu_share": load_share,
            "loadgen_capacity": top["rate"] / load_share if load_share else None,
        }
        family = [s for s in python if groups.get(s) in SOCKETSERVER_GROUPS]
        for key, found in (
            ("fastest_python", fastest),
            ("fastest_socketserver", _fastest(servers, family)),
        ):
            if found is None:
                continue
            server, summary = found
            capacity = row["loadgen_capacity"]
            row[key] = {
                "server": server,
                "rate": summary["rate"],
                "cpu_share": summary["server_cpu_share"],
                "loadgen_cpu_share": summary["loadgen_cpu_share"],
                "capacity_ratio": capacity / summary["rate"]
                if capacity and summary["rate"]
                else None,
            }
        rows.append(row)
    return rows


def derive(results: dict[str, Any]) -> None:
    """(Re)compute every figure derived from the runs: summaries, ratios, headroom.

    Kept apart from measuring so that ``--render`` of an older JSON uses today's maths.
    """
    for workload in results["workloads"].values():
        for entry in workload["servers"].values():
            entry["summary"] = summarize(entry["runs"])
        protocol = workload["protocol"]
        add_ratios(workload, results["baseline"][protocol], results["ceiling"][protocol])
        add_rerun_intervals(workload)
        if workload.get("table") == "prefork_scaling":
            add_scaling_ratios(workload)
    results["loadgen_headroom"] = loadgen_headroom(results)


def add_scaling_ratios(workload: dict[str, Any]) -> None:
    """``vs_one_worker``: each pre-fork row against one worker of its class and placement."""
    servers = workload["servers"]
    one = {}
    for entry in servers.values():
        extra = (entry["summary"] or {}).get("extra", {})
        if extra.get("workers") == 1:
            one[(extra.get("family"), extra.get("layout"))] = entry["summary"]
    for entry in servers.values():
        summary = entry["summary"]
        extra = (summary or {}).get("extra", {})
        reference = one.get((extra.get("family"), extra.get("layout")))
        entry["vs_one_worker"] = ratios(summary, reference)


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits: beyond the noise, and half the committed bytes."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.tmp")
    partial.write_text(json.dumps(_rounded(results), indent=1) + "\n")
    os.replace(partial, path)


# -- Markdown ----------------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "MB/s" or abs(value) < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _notes(entry: dict[str, Any], conns: int | None) -> str:
    notes = []
    summary = entry["summary"]
    if entry.get("note"):
        notes.append(entry["note"])
    if summary:
        extra = summary["extra"]
        if extra.get("idle_requested"):
            notes.append(
                f"{extra['idle_open']:,}/{extra['idle_requested']:,} idle open "
                f"in {extra['idle_connect_s']:.1f} s"
                + (f", {extra['idle_dropped']:,} dropped" if extra.get("idle_dropped") else "")
            )
        if summary["stalled_conns"]:
            notes.append(f"{summary['stalled_conns']}/{conns} connections never answered")
        if summary["errors"]:
            notes.append(f"{summary['errors']:,} client errors")
        share = summary["loadgen_cpu_share"]
        if share is not None and share >= 0.95:
            notes.append(f"load generator saturated ({share:.0%} of its core)")
    notes.extend(entry.get("failures", []))
    if entry.get("not_repeated"):
        notes.append(entry["not_repeated"])
    return "; ".join(note.replace("|", "\\|").replace("\n", " ") for note in notes)


def render_workload(name: str, workload: dict[str, Any], settings: dict[str, Any]) -> str:
    unit = workload["unit"]
    cpu_header = f"µs CPU/{CPU_UNIT_SHORT.get(workload['cpu_unit'], workload['cpu_unit'])}"
    lines = [
        f"### {name}: {workload['description']}",
        "",
        f"| server | {unit} | range | rerun 95% | × stdlib | × C | {cpu_header} | × stdlib | × C "
        "| p50 µs | p99 µs | p99.9 µs | RSS MiB | threads/procs | CPU: server / load gen / other "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    conns = settings["idle_active"] if name == "idle" else settings["conns"]
    for server, entry in workload["servers"].items():
        summary = entry["summary"]
        if summary is None:
            lines.append(f"| {server} |" + " – |" * 14 + f" {_notes(entry, conns)} |")
            continue
        base, top = entry["vs_baseline"], entry["vs_ceiling"]
        spread = f"{_number(summary['rate_min'], unit)}–{_number(summary['rate_max'], unit)}"
        threads = f"{summary['threads']:,.0f}/{summary['processes']:,.0f}"
        interval = entry.get("rerun_interval")
        rerun = (
            f"{_number(interval['low'], unit)}–{_number(interval['high'], unit)}"
            if interval
            else "–"
        )
        cells = [
            server,
            _number(summary["rate"], unit),
            spread,
            rerun,
            _ratio(base.get("rate")),
            _ratio(top.get("rate")),
            _number(summary["cpu_us_per_unit"]),
            _ratio(base.get("cpu_us_per_unit")),
            _ratio(top.get("cpu_us_per_unit")),
            _number(summary.get("p50")),
            _number(summary.get("p99")),
            _number(summary.get("p99.9")),
            _number(summary["rss_mib"]),
            threads,
            _shares(
                summary["server_cpu_share"],
                summary["loadgen_cpu_share"],
                summary.get("other_cpu_share"),
            ),
            _notes(entry, conns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_summary(results: dict[str, Any]) -> str:
    """One row per echo server: the headline figure of every echo workload."""
    workloads = {
        name: w
        for name, w in results["workloads"].items()
        if w["protocol"] == "echo" and w.get("table", "standard") == "standard"
    }
    if not workloads:
        return ""
    servers: list[str] = []
    for workload in workloads.values():
        servers += [name for name in workload["servers"] if name not in servers]
    headers = [f"{name} {w['unit']}" for name, w in workloads.items()]
    with_cpu = "pingpong" in workloads
    if with_cpu:
        headers.append("µs CPU per ping-pong request")
    lines = [
        "| server | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(headers),
    ]
    for server in servers:
        cells = [server]
        for workload in workloads.values():
            entry = workload["servers"].get(server)
            summary = entry["summary"] if entry else None
            if summary is None:
                cells.append("–")
                continue
            ratio = entry["vs_baseline"].get("rate")
            cells.append(f"{_number(summary['rate'], workload['unit'])} ({_ratio(ratio)})")
        if with_cpu:
            entry = workloads["pingpong"]["servers"].get(server)
            summary = entry["summary"] if entry else None
            cells.append(_number(summary["cpu_us_per_unit"]) if summary else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shares(*shares: float | None) -> str:
    return " / ".join("–" if share is None else f"{share:.0%}" for share in shares)


def render_headroom(results: dict[str, Any]) -> str:
    rows = results.get("loadgen_headroom", [])
    if not rows:
        return ""
    lines = [
        "| workload | C server (CPU: server / load gen) | load generator capacity "
        "| fastest Python server (CPU: server / load gen) | capacity ÷ it "
        "| fastest stdlib/sockserve server (CPU: server / load gen) | capacity ÷ it |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for row in rows:
        unit = results["workloads"][row["workload"]]["unit"]
        c_shares = _shares(row["ceiling_cpu_share"], row["ceiling_loadgen_cpu_share"])
        cells = [
            row["workload"],
            f"{_number(row['ceiling_rate'], unit)} {unit} ({c_shares})",
            f"≈ {_number(row['loadgen_capacity'], unit)}",
        ]
        for key in ("fastest_python", "fastest_socketserver"):
            found = row.get(key)
            if found is None:
                cells += ["–", "–"]
                continue
            shares = _shares(found["cpu_share"], found["loadgen_cpu_share"])
            cells.append(f"{found['server']}: {_number(found['rate'], unit)} ({shares})")
            cells.append(_ratio(found["capacity_ratio"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    pins = (
        f"server pinned to core(s) {s['server_cores']}, load generator to {s['loadgen_cores']}"
        if s["server_cores"]
        else "no pinning (fewer than 2 usable cores)"
    )
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    load = results["load_average"]
    return "\n".join(
        [
            f"- **Machine:** {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
            f"{m['os']}, Linux {m['kernel']}, {m['python']}",
            f"- **Tools:** {m['compiler']}; {m['wrk'] or 'no wrk'}; {packages}; "
            f"sockserve at {m['sockserve_commit']}",
            f"- **Method:** {pins}; {s['repeats']} repeat(s) of {s['duration_s']} s after "
            f"{s['warmup_s']} s warm-up, repeats spread over the whole run; median shown, "
            "range is min–max over the repeats, *rerun 95%* is where a rerun's median "
            "should land (pooled over the workload's servers; `bench/reproducibility.py`)",
            f"- **Load average** (1/5/15 min) at start {load['start']}, at end {load['end']}",
        ]
    )


def _cores(cores: list[int]) -> str:
    return ",".join(map(str, cores)) if cores else "any"


def _mib_list(values: list[float]) -> str:
    if not values:
        return "–"
    if max(values) - min(values) < 0.05 * max(values) + 0.1:
        return f"{len(values)}×{statistics.mean(values):.1f}"
    return " + ".join(f"{value:.1f}" for value in values)


def render_prefork_scaling(workload: dict[str, Any]) -> str:
    unit = workload["unit"]
    lines = [
        f"### prefork_scaling: {workload['description']}",
        "",
        f"| server | workers | cores: server / load gen | {unit} | range | × 1 worker "
        "| µs CPU/conn | × 1 worker | CPU: server / load gen / other | master CPU "
        "| idle PSS MiB: master / workers | idle USS MiB per worker "
        "| PSS MiB total: idle / load | notes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for server, entry in workload["servers"].items():
        summary = entry["summary"]
        if summary is None:
            lines.append(f"| {server} |" + " – |" * 12 + f" {_notes(entry, None)} |")
            continue
        extra = summary["extra"]
        idle, load = extra.get("idle", {}), extra.get("load", {})
        mine = entry.get("vs_one_worker", {})
        cells = [
            f"{extra.get('family', server)}",
            str(extra.get("workers", "–")),
            f"{_cores(extra.get('server_cores', []))} / {_cores(extra.get('loadgen_cores', []))}",
            _number(summary["rate"], unit),
            f"{_number(summary['rate_min'], unit)}–{_number(summary['rate_max'], unit)}",
            _ratio(mine.get("rate")),
            _number(summary["cpu_us_per_unit"]),
            _ratio(mine.get("cpu_us_per_unit")),
            _shares(
                summary["server_cpu_share"],
                summary["loadgen_cpu_share"],
                summary.get("other_cpu_share"),
            ),
            "–" if extra.get("master_cpu_share") is None else f"{extra['master_cpu_share']:.1%}",
            f"{_number(idle.get('master_pss_mib'))} / {_mib_list(idle.get('worker_pss_mib', []))}",
            _mib_list(idle.get("worker_uss_mib", [])),
            f"{_number(idle.get('total_pss_mib'))} / {_number(load.get('total_pss_mib'))}",
            _notes(entry, extra.get("conns")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    costs = worker_costs(workload)
    if costs:
        lines += ["", *costs]
    return "\n".join(lines)


def worker_costs(workload: dict[str, Any]) -> list[str]:
    """One line per pre-fork class: what one more worker costs, idle, in PSS and USS."""
    by_family: dict[str, dict[int, dict[str, Any]]] = {}
    for entry in workload["servers"].values():
        summary = entry["summary"]
        if summary is None or summary["extra"].get("layout") != "one-core":
            continue  # memory does not depend on placement: one layout is enough
        extra = summary["extra"]
        by_family.setdefault(extra["family"], {})[extra["workers"]] = extra
    lines = []
    for family, rows in by_family.items():
        if 1 not in rows or len(rows) < 2:
            continue
        most = max(rows)
        one, many = rows[1]["idle"], rows[most]["idle"]
        added = (many["total_pss_mib"] - one["total_pss_mib"]) / (most - 1)
        uss = statistics.mean(many["worker_uss_mib"]) if many["worker_uss_mib"] else None
        lines.append(
            f"- **{family}**, idle: {most} workers take {many['total_pss_mib']:.1f} MiB PSS "
            f"against {one['total_pss_mib']:.1f} for one, so each worker beyond the first "
            f"adds {added:.1f} MiB; a worker's own pages (USS) are {_number(uss)} MiB, the "
            f"rest of its {_number(statistics.mean(many['worker_rss_mib']))} MiB RSS is "
            f"shared with the master (whose own PSS is {_number(many['master_pss_mib'])} MiB)."
        )
    return lines


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:,.1f}"


def render_pool_memory(workload: dict[str, Any]) -> str:
    lines = [
        f"### pool_memory: {workload['description']}",
        "",
        "| server | thread bound | served while all held | threads while held "
        "| RSS MiB: idle → held | KiB per held conn | rest served after release in "
        "| peak threads | peak RSS MiB | µs CPU/conn | wait for echo p50 / p99 / max ms "
        "| CPU: server / client / other | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for server, entry in workload["servers"].items():
        summary = entry["summary"]
        if summary is None:
            lines.append(f"| {server} |" + " – |" * 12 + f" {_notes(entry, None)} |")
            continue
        extra = summary["extra"]
        bound = extra.get("thread_bound")
        if not extra.get("drained"):
            drained = f"not all: {extra.get('served', 0):,}/{extra.get('conns', 0):,}"
        elif extra.get("hold_served") == extra.get("served"):
            drained = "none left"
        else:
            drained = f"{extra['drain_s']:.2f} s"
        cells = [
            server,
            "none" if bound is None else f"max_workers={bound}",
            f"{extra.get('hold_served', 0):,}/{extra.get('conns', 0):,} "
            f"({extra.get('hold_connected', 0):,} connected)",
            f"{summary['threads']:,.0f}",
            f"{_number(extra.get('idle_rss_mib'))} → {_number(summary['rss_mib'])}",
            _number(extra.get("kib_per_held_conn")),
            drained,
            f"{extra.get('peak_threads', 0):,}",
            _number(extra.get("peak_rss_mib")),
            _number(summary["cpu_us_per_unit"]),
            " / ".join(_ms(summary.get(key)) for key in ("p50", "p99", "max")),
            _shares(
                summary["server_cpu_share"],
                summary["loadgen_cpu_share"],
                summary.get("other_cpu_share"),
            ),
            _notes(entry, extra.get("conns")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_concurrency(workload: dict[str, Any]) -> bool:
    return workload.get("table", "standard") in CONCURRENCY_TABLES


def render_concurrency(results: dict[str, Any]) -> str | None:
    """The pre-fork scaling and pool-memory section, or None if neither ran."""
    chosen = {n: w for n, w in results["workloads"].items() if _is_concurrency(w)}
    if not chosen:
        return None
    s = results["settings"]
    parts = [
        CONCURRENCY_BEGIN,
        f"_Generated by `{results['command']}` on {results['started_at']} "
        f"({results['elapsed_s'] / 60:.1f} min). Do not edit between these markers._",
        "",
        render_machine(results),
        f"- **Placement:** each pre-fork row names the cores of its server and of its load "
        f"generator; pool_memory runs the server on {s['server_cores']} and its client on "
        f"{s['loadgen_cores']}",
    ]
    for workload in chosen.values():
        if workload["table"] == "prefork_scaling":
            parts += ["", render_prefork_scaling(workload)]
        else:
            parts += ["", render_pool_memory(workload)]
    parts.append(CONCURRENCY_END)
    return "\n".join(parts)


def render_markdown(results: dict[str, Any], chart: str | None) -> str:
    parts = [
        MARK_BEGIN,
        f"_Generated by `{results['command']}` on {results['started_at']} "
        f"({results['elapsed_s'] / 60:.1f} min). Do not edit between these markers._",
        "",
        render_machine(results),
    ]
    if chart:
        parts += ["", f"![benchmark chart]({chart})"]
    summary = render_summary(results)
    if summary:
        parts += [
            "",
            "### Summary (median; ratio to stdlib ThreadingTCPServer in brackets)",
            "",
            summary,
        ]
    headroom = render_headroom(results)
    if headroom:
        parts += [
            "",
            "### Load generator headroom",
            "",
            "CPU shares are CPU-seconds per second (100% = the whole pinned core). The "
            "load generator's capacity is the C server's rate divided by the load "
            "generator's CPU share in that run: what it would drive on its whole core. "
            "A Python server well below that capacity and near 100% CPU itself was the "
            "bottleneck of its own run. The load generator for http is wrk.",
            "",
            headroom,
        ]
    for name, workload in results["workloads"].items():
        if workload.get("table", "standard") == "standard":
            parts += ["", render_workload(name, workload, results["settings"])]
    if any(_is_concurrency(w) for w in results["workloads"].values()):
        parts += ["", "Pre-fork scaling and pool memory: see their own section below."]
    skipped = {**results["skipped_servers"], **results["skipped_workloads"]}
    if skipped:
        parts += ["", "### Skipped", ""]
        parts += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    parts.append(MARK_END)
    return "\n".join(parts)


DOC_TEMPLATE = f"""# Performance

{MARK_BEGIN}
{MARK_END}
"""


def has_main_section(results: dict[str, Any]) -> bool:
    """Whether ``results`` hold a workload of the main section (so it should be rewritten)."""
    return any(not _is_concurrency(w) for w in results["workloads"].values())


def update_docs(
    path: Path, markdown: str, begin: str = MARK_BEGIN, end_mark: str = MARK_END
) -> None:
    """Replace what lies between ``begin`` and ``end_mark`` in ``path`` (created if missing).

    ``markdown`` includes the markers themselves; a missing pair is appended at the end.
    """
    text = path.read_text() if path.exists() else DOC_TEMPLATE
    start, end = text.find(begin), text.find(end_mark)
    if start < 0 or end < start:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end_mark}\n"
        start, end = text.find(begin), text.find(end_mark)
    path.write_text(text[:start] + markdown + text[end + len(end_mark) :])


def relative_link(target: Path, from_file: Path) -> str:
    return Path(os.path.relpath(target, from_file.parent)).as_posix()
