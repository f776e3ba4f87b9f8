"""Running ``serve_process.py`` from a case: start, wait for READY, signal, stop, read.

The child's stderr goes to a file, so a case can read the server's log while it runs;
stdout is a pipe carrying the READY and STOPPED lines. The child starts a session of its
own (``start_new_session``), so its session id is its pid: what it leaves behind is
found in /proc by session (``battery.session_members``). Every wait is bounded, and
``close()`` kills whatever is left (by pid, the child's and its session's only).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .battery import session_members

HERE = Path(__file__).resolve().parent
#: The package source and this directory, for the child (it imports ``protocol``).
CHILD_PYTHONPATH = os.pathsep.join([str(HERE.parent.parent / "src"), str(HERE)])
#: How long a server process may take to start and print READY (Python's start-up on a
#: loaded 2-core machine); it only bounds a failing case.
START_TIMEOUT = 30.0


class ServerProcess:
    """One ``serve_process.py`` child."""

    def __init__(
        self, settings: dict[str, Any], log_path: Path, *, prefix: list[str] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH}
        self.process = subprocess.Popen(
            [*(prefix or []), sys.executable, str(HERE / "serve_process.py"), json.dumps(settings)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._out = b""
        line = self._read_line(START_TIMEOUT)
        assert line.startswith("READY "), f"no READY line: {line!r}\n{self.log()}"
        _, address, pid = line.split(" ", 2)
        decoded = json.loads(address)
        self.address: Any = tuple(decoded) if isinstance(decoded, list) else decoded
        self.server_pid = int(pid)  # the Python process (under a prefix: not self.pid)

    def _read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0:
                return ""
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return self._out.decode()
                self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return line.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self, containing: str) -> list[str]:
        return [line for line in self.log().splitlines() if containing in line]

    def signal(self, signum: int) -> None:
        os.kill(self.server_pid, signum)

    def stop(self, timeout: float = 15.0) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
        """SIGTERM; wait for STOPPED and the exit: ``(stats, drain report, seconds)``."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        line = self._read_line(timeout)
        code = self.process.wait(max(0.1, timeout - (time.monotonic() - started)))
        seconds = time.monotonic() - started
        assert line.startswith("STOPPED "), f"no STOPPED line: {line!r}\n{self.log()}"
        assert code == 0, f"exit status {code}\n{self.log()}"
        _, stats, report = line.split(" ", 2)
        return json.loads(stats), json.loads(report), seconds

    def close(self) -> None:
        """Kill what is left of the child and its session; release the pipes."""
        left = session_members(self.pid)
        if self.process.poll() is None:
            left.add(self.pid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
