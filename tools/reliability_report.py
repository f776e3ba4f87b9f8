"""Run the fault battery and print one table, case x mode, with each case's figure.

Usage: ``python3 tools/reliability_report.py [--write] [pytest arguments, e.g. --soak]``

Each case of ``tests/reliability`` records its figure (``tests/reliability/figures.py``);
this runs the battery with a figures file, then prints a Markdown table of them, with
the pytest outcome line, the wall time and the machine's load average around the run
(the machine is often shared: times are read against it). ``--write`` also stores the
table in ``docs/reliability.md``, after a description of the cases (``CASES``), in a
section headed by the command that made it (replacing that command's last one, keeping
the other commands': the CI-size table and, say, ``--write --soak -k soak``'s).
``--soak`` (a pytest option) runs every case at full size and the RSS soak in every
mode: tens of minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "reliability.md"
FIGURES_ENV = "BATTERY_FIGURES_FILE"
#: What each case (a test module's name) proves, for the document's reader.
CASES = {
    "integrity": "many clients, pipelined requests in 1-64-byte pieces, some truncated: "
    "every reply checksummed and correct; descriptors, threads and children back to "
    "their starting counts",
    "handler_failures": "1 request in 10 raises, and `handle_error` itself raises now and "
    "then: every other reply correct, nothing leaked",
    "misbehaving_clients": "resets mid-request and mid-reply, half-closed connections: "
    "normal clients keep 100% success; peer faults counted apart, logged without tracebacks",
    "capacity": "`RLIMIT_NOFILE` lowered: the accept loop does not spin and recovers; "
    "`max_connections` never exceeded, nothing dropped after accept",
    "shutdown": "everything accepted before `shutdown()`/`drain()` is served, nothing "
    "after; blocked handlers aborted at the deadline; the CLI under SIGTERM",
    "prefork_faults": "SIGTERM/SIGKILL to the master, killed and hung workers, recycling: "
    "no zombie, no orphan, no lost request",
    "udp_flood": "a datagram flood into a small `SO_RCVBUF`: read = handled + dropped by "
    "reason; the kernel's own drops in `stats().kernel_drops` (Linux's count, read with "
    "`SO_MEMINFO`) explain every datagram not read; oversized ones never handed on cut short",
    "signals": "a signal every millisecond while serving fails no request",
    "soak": "RSS of the server process (pre-fork: master and workers) grows < 5% after "
    "warm-up; every mode with `--soak` (40 s each), one mode for 1.5 s without",
    "bad_networks": "every TCP and UDP mode at once between two network namespaces the test "
    "makes, over a wire with 20+-5 ms delay, 2% loss, 10% reordering (a TUN relay: this "
    "kernel has no `sch_netem`): clients complete (UDP clients retry), `idle_timeout` cuts "
    "a silent client at its configured time",
}


def main(argv: list[str]) -> int:
    write = "--write" in argv
    pytest_args = [arg for arg in argv if arg != "--write"]
    with tempfile.TemporaryDirectory() as directory:
        figures = Path(directory) / "figures.jsonl"
        env = {**os.environ, FIGURES_ENV: str(figures)}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p",
                   "no:cacheprovider", *pytest_args]  # fmt: skip
        started = time.monotonic()
        load_before = os.getloadavg()[0]
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        load = (load_before, os.getloadavg()[0])
        rows = (
            [json.loads(line) for line in figures.read_text().splitlines()]
            if (figures.exists())
            else []
        )
    outcome = next(
        (line for line in reversed(run.stdout.splitlines()) if line.strip()), "(no output)"
    )
    table = render(rows, outcome, seconds, pytest_args, load)
    print(table)
    if run.returncode != 0:
        print(run.stdout[-4000:], file=sys.stderr)
    if write:
        previous = REPORT.read_text() if REPORT.exists() else ""
        REPORT.write_text(document(table, pytest_args, previous))
    return run.returncode


def render(
    rows: list[dict[str, str]],
    outcome: str,
    seconds: float,
    args: list[str],
    load: tuple[float, float],
) -> str:
    lines = [
        "| case | mode | figure |",
        "| --- | --- | --- |",
        *(
            f"| {r['case']} | {r['mode']} | {r['figure']} |"
            for r in sorted(rows, key=lambda r: (r["case"], r["mode"]))
        ),
        "",
        f"{len(rows)} figures; pytest: {outcome}; wall time {seconds:.0f} s"
        + (f" ({' '.join(args)})" if args else " (CI size)")
        + f"; load average {load[0]:.1f} before, {load[1]:.1f} after ({os.cpu_count()} CPUs)",
    ]
    return "\n".join(lines)


#: Each run's section in the document starts with this, then its command.
SECTION_MARK = "\n## Made with `"
#: The CI-size run's command, whose section comes first.
DEFAULT_COMMAND = "python3 tools/reliability_report.py --write"


def document(table: str, args: list[str], previous: str = "") -> str:
    """The document: the cases, then one section per command that wrote to it (this
    run's replaces the one of the same command; the CI-size run's comes first)."""
    command = " ".join(["python3 tools/reliability_report.py --write", *args])
    cases = "\n".join(f"- *{name}*: {text}." for name, text in CASES.items())
    sections = {command: f"{SECTION_MARK}{command}`\n\n{table}\n"}
    for part in previous.split(SECTION_MARK)[1:]:
        other = part.split("`", 1)[0]
        sections.setdefault(other, SECTION_MARK + part.rstrip("\n") + "\n")
    ordered = sorted(sections.items(), key=lambda item: (item[0] != DEFAULT_COMMAND, item[0]))
    return (
        "# Reliability report\n\n"
        "The fault battery (`tests/reliability/`, see its `__init__.py`) run in every mode; "
        "each row is one case in one mode with the figure it measured. The cases:\n\n"
        f"{cases}\n\n"
        "`python3 tools/test.py --soak` (or `python3 -m pytest tests/reliability --soak`) "
        "runs every case at full size and the soak in every mode. Each section below is "
        "the last run of the command that heads it (`--write` replaces its own section and "
        "keeps the others).\n" + "".join(text for _, text in ordered)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
