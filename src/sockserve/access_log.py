"""The access log: one line per connection (or datagram), written as it ends.

A line says who the client was (the real one behind a PROXY header: the address the
handler saw), how the connection ended, how long it lasted and how many bytes it
carried (``tcp_info.py``; ``-`` where unknown). Two formats:

- ``text``, one Common-Log-like line::

    127.0.0.1:40312 [07/Mar/2025:10:00:00 +0000] served 0.0031 12 48

  client, time the connection ended, outcome, seconds, bytes in, bytes out. A refusal
  reads ``refused:REASON`` (``refused:denied``, ``refused:proxy_timeout``) and has no
  duration (``-``): it never became a request.
- ``json``, one object per line: ``time`` (ISO 8601, UTC), ``client``, ``outcome``,
  ``reason`` (refusals; else null), ``duration`` (seconds or null), ``bytes_in``,
  ``bytes_out`` (null where unknown).

Outcomes: ``served``; ``handler_error``; the peer-fault kinds of ``handler_errors.py``
(``reset``, ``timeout``, ``line_too_long``, ``bad_input``); ``aborted`` (cut short by a
drain, a shutdown, or a forked child killed); ``refused`` with its reason.

Writing: one ``os.write`` per line on a descriptor opened with ``O_APPEND``, so lines
from threads, and from pre-fork workers sharing the file, never interleave (appends to a
regular file are atomic per write on Linux; to a pipe, up to ``PIPE_BUF`` bytes). No
buffer: a line is on disk (in the page cache) the moment the connection ends, and a
crash loses nothing. Measured cost with the log on: see docs/observability.md.

Rotation: ``reopen_soon()`` only raises a flag (safe in a signal handler); the next
line written opens the path again and swaps the new file in under the same descriptor
number (``dup2``), so a thread writing at that moment writes to the old file or the
new one, never to a closed descriptor. The CLI calls it on SIGUSR1.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from .addresses import format_address

LOG_FORMATS = ("text", "json")
#: The path that means standard output (never reopened).
STDOUT = "-"
#: Outcomes besides ``served``, ``handler_error`` and the peer-fault kinds.
REFUSED = "refused"
ABORTED = "aborted"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    """Lines about finished connections, appended to ``path`` (``"-"``: standard output).

    ``log_format``: ``"text"`` or ``"json"``. Give it to a server with
    ``server.set_access_log(log)``; ``close()`` it after the server is closed.
    """

    def __init__(self, path: str, *, log_format: str = "text") -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        self.path = path
        self.log_format = log_format
        self._format = self._json_line if log_format == "json" else self._text_line
        self._fd = 1 if path == STDOUT else _open_for_append(path)
        self._wants_reopen = False
        self._reopen_lock = threading.Lock()
        self._second = -1  # the whole second the cached time texts below are for
        self._clf_time = ""
        self._iso_time = ""

    # -- writing ----------------------------------------------------------------------------

    def connection_ended(
        self,
        client_address: Any,
        outcome: str,
        duration: float | None,
        bytes_in: int | None,
        bytes_out: int | None,
        reason: str | None = None,
    ) -> None:
        """Append the line for one connection (or datagram); thread-safe."""
        if self._wants_reopen:
            self._reopen()
        line = self._format(client_address, outcome, reason, duration, bytes_in, bytes_out)
        try:
            os.write(self._fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk or a closed stdout must not fail the server's connections

    def _times(self) -> tuple[str, str, int]:
        now = time.time()
        second = int(now)
        if second != self._second:  # one strftime per second, not per line
            moment = time.gmtime(second)
            self._clf_time = (
                f"[{moment.tm_mday:02d}/{_MONTHS[moment.tm_mon - 1]}/{moment.tm_year}:"
                f"{time.strftime('%H:%M:%S', moment)} +0000]"
            )
            self._iso_time = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
            self._second = second
        return self._clf_time, self._iso_time, int((now - second) * 1000)

    def _text_line(
        self,
        client_address: Any,
        outcome: str,
        reason: str | None,
        duration: float | None,
        bytes_in: int | None,
        bytes_out: int | None,
    ) -> str:
        clf_time = self._times()[0]
        if reason is not None:
            outcome = f"{outcome}:{reason}"
        return (
            f"{_client_text(client_address)} {clf_time} {outcome} "
            f"{'-' if duration is None else f'{duration:.4f}'} "
            f"{'-' if bytes_in is None else bytes_in} {'-' if bytes_out is None else bytes_out}\n"
        )

    def _json_line(
        self,
        client_address: Any,
        outcome: str,
        reason: str | None,
        duration: float | None,
        bytes_in: int | None,
        bytes_out: int | None,
    ) -> str:
        # Written out by hand, not json.dumps: 1 µs instead of 3 per line (measured);
        # only the client and the reason can hold characters JSON must escape.
        _, iso_time, millis = self._times()
        return (
            f'{{"time": "{iso_time}.{millis:03d}Z", '
            f'"client": {_json_string(_client_text(client_address))}, '
            f'"outcome": "{outcome}", '
            f'"reason": {"null" if reason is None else _json_string(reason)}, '
            f'"duration": {"null" if duration is None else f"{duration:.6f}"}, '
            f'"bytes_in": {"null" if bytes_in is None else bytes_in}, '
            f'"bytes_out": {"null" if bytes_out is None else bytes_out}}}\n'
        )

    # -- rotation and closing ----------------------------------------------------------------

    def reopen_soon(self) -> None:
        """Open ``path`` again before the next line (after logrotate moved it).

        Only sets a flag: safe in a signal handler, from any thread.
        """
        if self.path != STDOUT:
            self._wants_reopen = True

    def _reopen(self) -> None:
        with self._reopen_lock:
            if not self._wants_reopen:
                return  # another thread reopened it while this one waited
            self._wants_reopen = False
            try:
                fresh = _open_for_append(self.path)
            except OSError:
                return  # keep writing to the old file rather than lose lines
            try:
                os.dup2(fresh, self._fd)
            finally:
                os.close(fresh)

    def close(self) -> None:
        if self._fd > 2:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _open_for_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _client_text(client_address: Any) -> str:
    """The client as one field: no spaces, ``-`` for an unnamed Unix socket."""
    if type(client_address) is tuple and len(client_address) == 2:  # IPv4: the usual case
        return f"{client_address[0]}:{client_address[1]}"
    if not client_address:
        return "-"
    return format_address(client_address).replace(" ", "\\x20")


def _json_string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)
