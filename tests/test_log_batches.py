"""Batched appends (``log_batches.py``) and what the access log keeps of its promises with them.

Lines are written by size or by a timer, so each test waits for what it expects as an
event: a FIFO it reads with ``select`` (the timer's write arrives on it), a process it
waits for, or a call (``flush``, ``close``, ``server_close``) after which the file must
already hold the lines. Nothing here sleeps to let a timer fire.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve import log_batches
from sockserve.log_batches import FLUSH_RECORDS, BatchedAppender, chunks_of_lines
from test_access_log import LogPipe
from test_contract import CLIENT_TIMEOUT, STOP_TIMEOUT

SRC = str(Path(__file__).resolve().parent.parent / "src")

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def render(records: Sequence[tuple[Any, ...]]) -> str:
    return "".join(f"{record[0]}\n" for record in records)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_chunks_are_whole_lines_within_the_limit() -> None:
    data = b"".join(f"line {n:04d}\n".encode() for n in range(100))  # 10 bytes each
    chunks = chunks_of_lines(data, 64)
    assert b"".join(chunks) == data
    assert all(len(chunk) <= 64 and chunk.endswith(b"\n") for chunk in chunks)
    assert chunks_of_lines(b"short\n", 64) == [b"short\n"]
    long_line = b"x" * 100 + b"\n"
    assert chunks_of_lines(b"a\n" + long_line + b"b\n", 64) == [b"a\n", long_line, b"b\n"]


def test_a_full_batch_is_written_at_once_and_the_rest_by_close(tmp_path: Path) -> None:
    path = tmp_path / "batches.log"
    appender = BatchedAppender(render, path=str(path))
    try:
        for n in range(FLUSH_RECORDS):
            appender.add((n,))
        # The batch is full: written by the thread that filled it, before add returned.
        assert lines_of(path) == [str(n) for n in range(FLUSH_RECORDS)]
        appender.add(("last",))
    finally:
        appender.close()
    assert lines_of(path)[-1] == "last"


def test_a_lone_line_arrives_by_the_timer(tmp_path: Path) -> None:
    pipe = LogPipe(tmp_path / "timer.log")
    appender = BatchedAppender(render, path=str(pipe.path))
    try:
        appender.add(("alone",))
        assert pipe.lines(1, timeout=CLIENT_TIMEOUT) == ["alone"]
        appender.add(("again",))  # the flusher waits for lines again after a flush
        assert pipe.lines(2, timeout=CLIENT_TIMEOUT)[1] == "again"
    finally:
        appender.close()
        pipe.close()


def test_writes_to_a_pipe_stay_within_pipe_buf(tmp_path: Path) -> None:
    pipe = LogPipe(tmp_path / "big.log")
    appender = BatchedAppender(
        lambda records: ("y" * 199 + "\n") * len(records), path=str(pipe.path)
    )
    sizes: list[int] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(log_batches.os, "write", recording_write)
            for n in range(FLUSH_RECORDS):
                appender.add((n,))
        assert len(pipe.lines(FLUSH_RECORDS)) == FLUSH_RECORDS
    finally:
        appender.close()
        pipe.close()
    assert len(sizes) > 1  # 25 KB (less than the pipe holds) in writes of whole lines
    assert max(sizes) <= log_batches.PIPE_CHUNK_BYTES


def test_threads_lose_and_split_no_line(tmp_path: Path) -> None:
    path = tmp_path / "threads.log"
    appender = BatchedAppender(render, path=str(path))
    per_thread = 1000

    def add_many(name: str) -> None:
        for n in range(per_thread):
            appender.add((f"{name}-{n}",))

    threads = [threading.Thread(target=add_many, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STOP_TIMEOUT)
    appender.close()
    expected = {f"t{i}-{n}" for i in range(4) for n in range(per_thread)}
    written = lines_of(path)
    assert len(written) == len(expected)
    assert set(written) == expected


def test_a_reopen_leaves_earlier_lines_in_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "rotated.log"
    appender = BatchedAppender(render, path=str(path))
    try:
        appender.add(("before",))
        os.rename(path, tmp_path / "rotated.log.1")
        appender.reopen_soon()  # what SIGUSR1 does
        appender.add(("after",))
        appender.flush()
    finally:
        appender.close()
    assert lines_of(tmp_path / "rotated.log.1") == ["before"]
    assert lines_of(path) == ["after"]


def test_a_closed_appender_drops_lines_and_holds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "closed.log"
    appender = BatchedAppender(render, path=str(path))
    appender.add(("kept",))
    appender.close()
    for n in range(3 * FLUSH_RECORDS):
        appender.add((n,))
    assert not appender._pending
    assert lines_of(path) == ["kept"]


def test_a_forked_child_does_not_write_the_parents_pending_lines(tmp_path: Path) -> None:
    path = tmp_path / "fork.log"
    appender = BatchedAppender(render, path=str(path))
    try:
        appender.add(("parent",))  # pending, with the flusher started
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                appender.add(("child",))
                appender.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        appender.close()
    assert sorted(lines_of(path)) == ["child", "parent"]


def test_lines_pending_at_interpreter_exit_are_written(tmp_path: Path) -> None:
    path = tmp_path / "exit.log"
    program = (
        "import sockserve\n"
        f"log = sockserve.AccessLog({str(path)!r}, log_format='json')\n"
        "log.connection_ended(('127.0.0.1', 1), 'served', 0.5, 1, 2)\n"
    )  # and no close(): atexit writes it
    subprocess.run(
        [sys.executable, "-c", program],
        env=dict(os.environ, PYTHONPATH=SRC),
        check=True,
        timeout=STOP_TIMEOUT * 2,
    )
    (line,) = lines_of(path)
    assert json.loads(line)["client"] == "127.0.0.1:1"


def test_server_close_writes_the_pending_lines(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    access_log = sockserve.AccessLog(str(path))
    server = sockserve.TCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler)
    server.set_access_log(access_log)
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT):
            server.handle_request()
        server.server_close()
        # A pre-fork worker leaves with os._exit right after its server_close.
        (line,) = lines_of(path)
        assert line.split(" ")[3] == "served"
    finally:
        server.server_close()
        access_log.close()


def test_standard_output_is_written_and_left_open() -> None:
    program = (
        "import sockserve, sys\n"
        "log = sockserve.AccessLog('-')\n"
        "log.connection_ended(None, 'refused', None, None, None, reason='denied')\n"
        "log.close()\n"
        "print('still open', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        check=True,
        timeout=STOP_TIMEOUT * 2,
    )
    first, second = done.stdout.splitlines()
    assert first.split(" ")[0] == "-"
    assert first.split(" ")[3] == "refused:denied"
    assert second == "still open"


def test_a_failing_render_loses_its_batch_not_the_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.log"
    broken = True

    def fragile_render(records: Sequence[tuple[Any, ...]]) -> str:
        if broken:
            raise ValueError("the test's broken formatter")
        return render(records)

    appender = BatchedAppender(fragile_render, path=str(path))
    try:
        for n in range(FLUSH_RECORDS):  # the full batch is written by this thread: no raise
            appender.add((n,))
        broken = False
        appender.add(("after",))
    finally:
        appender.close()
    assert lines_of(path) == ["after"]
    assert "access log lines failed" in caplog.text
