"""Worker processes as the master handles them: fork one, hear it, signal it, reap it.

The mechanism under the master's policy, kept apart so that ``master.py`` reads as rules.
Every descriptor here is the master's own; ``fork_worker`` closes them in the child, so a
worker holds only its status pipe's write end and the master-gone pipe's read end.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NoReturn

from ..metrics import DrainReport, ServerStats
from .worker import EXIT_BOOT_FAILED, LINE_KINDS, WorkerLink, close_descriptors

#: Bytes read from a status pipe at once: heartbeats are one byte, so this is plenty.
STATUS_READ_BYTES = 4096


@dataclass
class WorkerProcess:
    """The master's view of one worker."""

    pid: int
    channel: int  #: read end of the worker's status pipe
    pidfd: int | None
    generation: int
    last_seen: float
    is_ready: bool = False
    is_channel_open: bool = True
    eof_at: float | None = None  #: when its status pipe reported EOF (if no pidfd)
    stop_reason: str = ""  #: why it was asked (or decided) to stop; "" while serving
    stop_deadline: float | None = None
    kill_reason: str = ""  #: why it got SIGKILL; "" if it did not
    boot_error: str = ""
    pending: bytearray = field(default_factory=bytearray)
    stats: ServerStats | None = None  #: its last cumulative snapshot
    drained: DrainReport | None = None  #: its drain's report, sent as it stopped


def fork_worker(
    start_worker: Callable[[WorkerLink], NoReturn],
    link: WorkerLink,
    *,
    close_in_child: Iterable[int | socket.socket],
    block_signals: Iterable[int],
) -> tuple[int, int]:
    """Fork a worker running ``start_worker``; return its pid and its status pipe's read end.

    ``block_signals`` stay blocked in the child until it has installed its own handlers
    (it restores ``link.signal_mask``), so a signal sent at birth cannot run the master's
    handler in the worker. Raises ``OSError`` if the fork fails, having cleaned up.
    """
    channel, status_fd = os.pipe()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, block_signals)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # else the child inherits, and later repeats, this buffer
        except Exception:
            pass  # closed or broken: nothing to repeat
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(channel)
        os.close(status_fd)
        raise
    if pid == 0:
        try:
            close_descriptors([channel, *close_in_child])
            start_worker(replace(link, status_fd=status_fd, signal_mask=frozenset(mask)))
        finally:
            os._exit(EXIT_BOOT_FAILED)  # never return into the master's loop
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(status_fd)
    os.set_blocking(channel, False)
    return pid, channel


def read_status(channel: int, pending: bytearray) -> list[tuple[bytes, str]] | None:
    """The messages a worker has sent, as ``(kind, text)``; None at EOF (it exited).

    ``pending`` keeps a line (a boot failure, a stats snapshot) not fully arrived yet.
    """
    try:
        data = os.read(channel, STATUS_READ_BYTES)
    except BlockingIOError:
        return []
    if not data:
        return None
    pending += data
    messages: list[tuple[bytes, str]] = []
    while pending:
        kind = bytes(pending[:1])
        if kind not in LINE_KINDS:
            del pending[:1]
            messages.append((kind, ""))
            continue
        end = pending.find(b"\n")
        if end < 0:
            break  # the rest of the line is still on its way
        messages.append((kind, pending[1:end].decode("utf-8", "replace")))
        del pending[: end + 1]
    return messages


def reap(pid: int) -> int | None:
    """The exit code of child ``pid`` if it has exited (and is now reaped), else None.

    Only ever our own pid: ``waitpid(-1)`` would steal the status of children that are
    not workers (a ``subprocess.Popen`` of the application).
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0  # reaped by someone else: gone all the same
    return os.waitstatus_to_exitcode(status) if done else None


def send_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone; the reaper will see it


def describe_exit(exit_code: int) -> str:
    """``0`` → "exit status 0"; ``-9`` → "killed by SIGKILL"."""
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit status {exit_code}"
