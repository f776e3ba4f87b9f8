"""docs/deployment.md's systemd units are valid units, and their command lines valid commands.

Each ```ini block that starts with ``# /etc/systemd/system/NAME`` is written to a
temporary directory under NAME and checked with ``systemd-analyze verify`` (systemd's
own parser: unknown keys, missing units, a command that is not executable; templates
as the instance ``@8001``). The
executable path the page uses, ``/opt/app/venv/bin/sockserve``, is replaced with one
that exists here. Every ``ExecStart=`` is then given to the real command with
``--print-config``, which parses every option without serving. Nothing is started:
systemd need not be PID 1 here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import START_TIMEOUT, command_env

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
UNIT_BLOCK = re.compile(r"```ini\n# /etc/systemd/system/(?P<name>\S+)\n(?P<body>.*?)```", re.S)
#: Where the page's units find sockserve (a virtualenv), and what stands in for it here.
DOCUMENTED_EXECUTABLE = "/opt/app/venv/bin/sockserve"
#: The instance the template units are checked as (a port, as the page uses them).
EXAMPLE_INSTANCE = "8001"


def systemd_analyze() -> str:
    """The path of ``systemd-analyze``, installed with apt-get if missing and possible."""
    found = shutil.which("systemd-analyze")
    if found is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "systemd"], capture_output=True, check=False
        )
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed and apt-get could not install it")
    return found


def documented_units() -> dict[str, str]:
    units = {m["name"]: m["body"] for m in UNIT_BLOCK.finditer(DEPLOYMENT.read_text())}
    assert len(units) >= 5, f"expected the units of docs/deployment.md, found {list(units)}"
    return units


def test_the_documented_units_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    stand_in = shutil.which("true") or "/bin/true"
    paths = []
    for name, body in documented_units().items():
        # A template is checked as an instance: verify would instantiate it as "i".
        path = tmp_path / name.replace("@.", f"@{EXAMPLE_INSTANCE}.")
        path.write_text(body.replace(DOCUMENTED_EXECUTABLE, stand_in), encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run(
        [analyze, "verify", *paths],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(
    "exec_start",
    sorted(
        {
            line.removeprefix("ExecStart=")
            for body in documented_units().values()
            for line in body.splitlines()
            if line.startswith("ExecStart=")
        }
    ),
)
def test_the_documented_command_lines_parse(tmp_path: Path, exec_start: str) -> None:
    words = shlex.split(exec_start)
    assert words[0] == DOCUMENTED_EXECUTABLE
    result = subprocess.run(
        [sys.executable, "-m", "sockserve", *words[1:], "--print-config"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
        cwd=tmp_path,
        env=command_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
