"""Drive bench/loadgen.c: start it pinned, follow its MARK lines, return its RESULT.

The load generator prints ``MARK start`` when warm-up ends and ``MARK end`` when the
measurement ends; it then keeps the load running until we answer on its stdin, so the
server is sampled (CPU, RSS, threads) exactly at the window's edges and under load.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .build import compile_c
from .servers import pin_and_raise_limits

#: Loopback client addresses the load generator cycles through (127.0.0.2 onwards).
LOOPBACK_SOURCES = 200
#: Seconds beyond the planned run before the load generator is declared hung and killed.
HANG_MARGIN_S = 30.0


class LoadgenError(RuntimeError):
    """The load generator failed or hung; the message says how."""


@dataclass(frozen=True)
class LoadgenArgs:
    """One load generator run (see the modes in bench/loadgen.c)."""

    mode: str
    conns: int
    size: int
    warmup_s: float
    duration_s: float
    idle: int = 0
    connect_timeout_s: float = 10.0
    tail_timeout_s: float = 10.0

    def argv(self, host: str, port: int) -> list[str]:
        # Spread client addresses over 127.0.0.0/8 (see bind_next_source in loadgen.c)
        # when the server is there; anywhere else only the default source address is sure.
        sources = LOOPBACK_SOURCES if host.startswith("127.") else 0
        return [
            *("--host", host, "--port", str(port), "--mode", self.mode),
            *("--sources", str(sources)),
            *("--conns", str(self.conns), "--size", str(self.size), "--idle", str(self.idle)),
            *("--warmup", str(self.warmup_s), "--duration", str(self.duration_s)),
            *("--connect-timeout", str(self.connect_timeout_s)),
            *("--tail-timeout", str(self.tail_timeout_s)),
        ]

    def budget_s(self) -> float:
        """The longest a healthy run can take."""
        connect = self.connect_timeout_s if self.idle else 0.0
        return connect + self.warmup_s + self.duration_s + self.tail_timeout_s


def run_loadgen(
    args: LoadgenArgs,
    host: str,
    port: int,
    *,
    cores: Sequence[int] | None,
    on_mark: Callable[[str], None],
) -> dict[str, Any]:
    """Run the load generator; ``on_mark("start" | "end")`` is called at each MARK line."""
    binary = compile_c("loadgen.c")
    process = subprocess.Popen(
        [str(binary), *args.argv(host, port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin_and_raise_limits(cores),
    )
    try:
        result = _follow(process, args.budget_s() + HANG_MARGIN_S, on_mark)
        process.wait(timeout=HANG_MARGIN_S)
    finally:
        close_process(process)
    return result


def close_process(process: subprocess.Popen[bytes]) -> None:
    """Kill a client that is still running (a failed run) and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class ChildLines:
    """Whole lines from a client's stdout as they arrive (a partial line waits for the rest)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._process = process
        self._fd = process.stdout.fileno()
        self._pending = b""

    def read(self, timeout: float) -> list[bytes] | None:
        """The lines completed within ``timeout`` (perhaps none); None once it has exited."""
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if not readable:
            return []
        chunk = os.read(self._fd, 65536)
        if not chunk:
            return None
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        return lines

    def stderr(self) -> str:
        stream = self._process.stderr
        return stream.read().decode(errors="replace").strip() if stream else ""


def _follow(
    process: subprocess.Popen[bytes], budget_s: float, on_mark: Callable[[str], None]
) -> dict[str, Any]:
    assert process.stdin is not None
    output = ChildLines(process)
    deadline = time.monotonic() + budget_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoadgenError(f"the load generator hung for more than {budget_s:.0f} s")
        lines = output.read(left)
        if lines is None:
            raise LoadgenError(f"the load generator exited without a result: {output.stderr()}")
        for line in lines:
            if line == b"MARK start":
                on_mark("start")
            elif line == b"MARK end":
                on_mark("end")
                process.stdin.write(b"stop\n")  # the load may stop now
                process.stdin.flush()
            elif line.startswith(b"RESULT "):
                parsed: dict[str, Any] = json.loads(line[len(b"RESULT ") :])
                return parsed
