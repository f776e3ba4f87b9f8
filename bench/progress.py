"""A plain-text progress bar on stderr, no dependency.

On a terminal it redraws one line; anywhere else (CI logs, a test's captured stderr) it
prints one line per step, because carriage returns turn a log into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """``step(label)`` before each unit of work; ``done()`` at the end."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.is_terminal = self.stream.isatty()

    def step(self, label: str) -> None:
        filled = BAR_WIDTH * self.count // self.total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {self.count}/{self.total} {elapsed:4.0f}s {label}"
        self.count += 1
        if self.is_terminal:
            self.stream.write(f"\r\x1b[K{line}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message that must not be overwritten by the next redraw."""
        prefix = "\r\x1b[K" if self.is_terminal else ""
        self.stream.write(f"{prefix}{message}\n")
        self.stream.flush()

    def done(self) -> None:
        elapsed = time.monotonic() - self.started
        bar = "#" * BAR_WIDTH
        end = f"[{bar}] {self.count}/{self.total} {elapsed:4.0f}s done"
        self.note(end)
