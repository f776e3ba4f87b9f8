"""Each case's figure, for the report: one JSON line per (case, mode) when asked.

``tools/reliability_report.py`` sets ``BATTERY_FIGURES_FILE`` to a file and runs
the battery; every case calls the ``figure`` fixture with its figure, which lands there
(and in the test's ``user_properties``, so ``--junitxml`` carries it too).
"""

from __future__ import annotations

import json
import os

#: The environment variable naming the file figures are appended to.
FIGURES_ENV = "BATTERY_FIGURES_FILE"


def record_figure(case: str, mode: str, text: str) -> None:
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    line = json.dumps({"case": case, "mode": mode, "figure": text}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
