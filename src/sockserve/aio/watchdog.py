"""Notice a handler that blocks the event loop, and name it.

Design: a small thread samples the loop every ``threshold / 4`` seconds. It posts a
heartbeat with ``call_soon_threadsafe`` and reads ``asyncio.current_task(loop)``. When
the heartbeat has waited ``threshold`` seconds *and* the same task has been running at
every sample in that time, that task is holding the loop: one warning names its handler
and client; one more line says when it lets go. Requiring both keeps a merely busy loop
(many short steps, a different task at each sample) from being blamed on one handler.

Why not measure every step: wrapping each resumption of every handler costs on the
hot path, and asyncio's ``slow_callback_duration`` needs debug mode, which uvloop
does not implement the same way. The sampler costs one wake-up per interval and works
on both loops, and it also reports a handler that never gives the loop back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("sockserve.aio.watchdog")

#: ``describe(task) -> "EchoHandler for 127.0.0.1:5000"``, or None for a task that is not
#: a request of this server.
Describe = Callable[["asyncio.Task[object]"], "str | None"]


class LoopWatchdog:
    """Runs while a server serves; ``start()`` on the loop's thread, ``stop()`` anywhere."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold: float, describe: Describe
    ) -> None:
        self._loop = loop
        self._threshold = threshold
        self._describe = describe
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat_sent_at: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._watch, name="sockserve loop watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _heartbeat(self) -> None:
        self._heartbeat_sent_at = None

    def _watch(self) -> None:
        interval = self._threshold / 4
        held_by: asyncio.Task[object] | None = None
        held_since = 0.0
        is_reported = False
        while not self._stopping.wait(interval):
            now = time.monotonic()
            sent_at = self._heartbeat_sent_at
            if sent_at is None:
                self._heartbeat_sent_at = sent_at = now
                try:
                    self._loop.call_soon_threadsafe(self._heartbeat)
                except RuntimeError:
                    return  # the loop is closed: its server has stopped serving
            task = asyncio.current_task(self._loop)
            if task is not held_by:
                if is_reported and held_by is not None:
                    self._report_release(held_by, now - held_since)
                held_by, held_since, is_reported = task, now, False
            elif (
                task is not None
                and not is_reported
                and now - sent_at >= self._threshold
                and now - held_since >= self._threshold
            ):
                is_reported = True
                self._report_block(task, now - held_since)

    def _report_block(self, task: asyncio.Task[object], seconds: float) -> None:
        who = self._describe(task) or f"task {task.get_name()!r}"
        log.warning(
            "%s has blocked the event loop for %.2f s so far (slow_callback_duration=%s):"
            " something in it runs without awaiting; move blocking calls to"
            " asyncio.to_thread() or loop.run_in_executor()",
            who,
            seconds,
            self._threshold,
        )

    def _report_release(self, task: asyncio.Task[object], seconds: float) -> None:
        who = self._describe(task) or f"task {task.get_name()!r}"
        log.warning("%s gave the event loop back after about %.2f s", who, seconds)
