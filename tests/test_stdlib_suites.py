"""CPython's own test suites pass with sockserve standing in for ``socketserver``.

Each suite runs in a fresh interpreter (``stdlib_suites/run_suite.py``) so that
``http.server``, ``xmlrpc.server`` and ``wsgiref`` are imported on top of sockserve.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / "stdlib_suites" / "run_suite.py"

SUITES = [
    "test_socketserver",
    "test_httpservers",
    "test_xmlrpc",
    "test_wsgiref",
    "test_docxmlrpc",
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suite", SUITES)
def test_cpython_suite_passes_on_sockserve(suite: str) -> None:
    if importlib.util.find_spec(f"test.{suite}") is None:
        pytest.skip(f"CPython's test package (test.{suite}) is not installed for this Python")
    result = subprocess.run(
        [sys.executable, str(RUNNER), suite],
        capture_output=True,
        text=True,
        timeout=280,
        stdin=subprocess.DEVNULL,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"{suite} failed on sockserve:\n{report[-20000:]}"
    assert "OK" in report
