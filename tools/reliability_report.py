"""Run the fault battery and print one table, case x mode, with each case's figure.

Usage: ``python3 tools/reliability_report.py [--write] [pytest arguments, e.g. --soak]``

Each case of ``tests/reliability`` records its figure (``tests/reliability/figures.py``);
this runs the battery with a figures file, then prints a Markdown table of them, with
the pytest outcome line and the wall time. ``--write`` also stores the table, with the
command that made it, in ``docs/reliability.md``.
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
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        rows = (
            [json.loads(line) for line in figures.read_text().splitlines()]
            if (figures.exists())
            else []
        )
    outcome = next(
        (line for line in reversed(run.stdout.splitlines()) if line.strip()), "(no output)"
    )
    table = render(rows, outcome, seconds, pytest_args)
    print(table)
    if run.returncode != 0:
        print(run.stdout[-4000:], file=sys.stderr)
    if write:
        REPORT.write_text(document(table, pytest_args))
    return run.returncode


def render(rows: list[dict[str, str]], outcome: str, seconds: float, args: list[str]) -> str:
    lines = [
        "| case | mode | figure |",
        "| --- | --- | --- |",
        *(
            f"| {r['case']} | {r['mode']} | {r['figure']} |"
            for r in sorted(rows, key=lambda r: (r["case"], r["mode"]))
        ),
        "",
        f"{len(rows)} figures; pytest: {outcome}; wall time {seconds:.0f} s"
        + (f" ({' '.join(args)})" if args else " (CI size)"),
    ]
    return "\n".join(lines)


def document(table: str, args: list[str]) -> str:
    command = " ".join(["python3 tools/reliability_report.py --write", *args])
    return (
        "# Reliability report\n\n"
        "The fault battery (`tests/reliability/`, see its `__init__.py`) run in every mode; "
        "each row is one case in one mode with the figure it measured. Made with:\n\n"
        f"```\n{command}\n```\n\n{table}\n"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
