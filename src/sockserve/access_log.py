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

Writing (``log_batches.py``): ``connection_ended`` only notes the facts and the time,
as a tuple; the lines are formatted and written in batches (every ``FLUSH_RECORDS``
lines, or ``FLUSH_SECONDS`` after the first of a batch) on a descriptor opened with
``O_APPEND``, in writes of whole lines that never interleave with another thread's or
another pre-fork worker's. Formatting a batch in one loop, one system call per batch:
per connection that is what keeps the log inside its budget (docs/observability.md,
"Cost"). The price is durability: a line may reach the file up to ``FLUSH_SECONDS``
late, and a process killed outright loses its last ``FLUSH_SECONDS`` of lines; closing
the log or the server, and leaving the interpreter, write everything.

Rotation: ``reopen_soon()`` only raises a flag (safe in a signal handler); the next line
writes what is pending to the old file, then opens the path again under the same
descriptor number. The CLI calls it on SIGUSR1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from .addresses import format_address
from .log_batches import BatchedAppender

LOG_FORMATS = ("text", "json")
#: The path that means standard output (never reopened).
STDOUT = "-"
#: Outcomes besides ``served``, ``handler_error`` and the peer-fault kinds.
REFUSED = "refused"
ABORTED = "aborted"

_MILLIS = tuple(f"{ms:03d}" for ms in range(1000))
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: What ``connection_ended`` notes: end time (``time.time()``), client, outcome, reason,
#: duration, bytes in, bytes out.
Record = tuple[float, Any, str, "str | None", "float | None", "int | None", "int | None"]


class AccessLog:
    """Lines about finished connections, appended to ``path`` (``"-"``: standard output).

    ``log_format``: ``"text"`` or ``"json"``. Give it to a server with
    ``server.set_access_log(log)``; ``close()`` it after the server is closed (that
    writes the lines still pending; ``flush()`` does so without closing).
    """

    def __init__(self, path: str, *, log_format: str = "text") -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        self.path = path
        self.log_format = log_format
        render = self._json_lines if log_format == "json" else self._text_lines
        if path == STDOUT:
            self._appender = BatchedAppender(render, fd=1)
        else:
            self._appender = BatchedAppender(render, path=path)
        #: ``connection_ended`` for callers holding the record already (the serving
        #: core, once per connection): one call less on the hot path.
        self.add_record: Callable[[Record], None] = self._appender.add
        self._second = -1  # the whole second the cached time texts below are for
        self._clf_time = ""
        self._iso_time = ""
        #: ``"outcome": ..., "reason": null, `` by outcome (a dozen the library names).
        self._json_outcome_parts: dict[str, str] = {}

    def connection_ended(
        self,
        client_address: Any,
        outcome: str,
        duration: float | None,
        bytes_in: int | None,
        bytes_out: int | None,
        reason: str | None = None,
    ) -> None:
        """Note the line for one connection (or datagram); thread-safe, never raises for
        the file's sake (a full disk drops lines, not connections)."""
        self.add_record(
            (time.time(), client_address, outcome, reason, duration, bytes_in, bytes_out)
        )

    def flush(self) -> None:
        """Write the pending lines now."""
        self._appender.flush()

    # -- formatting, a batch at a time ---------------------------------------------------------

    def _times(self, second: int) -> None:
        """Cache the time texts of ``second``: one strftime per second, not per line."""
        moment = time.gmtime(second)
        self._clf_time = (
            f"[{moment.tm_mday:02d}/{_MONTHS[moment.tm_mon - 1]}/{moment.tm_year}:"
            f"{time.strftime('%H:%M:%S', moment)} +0000]"
        )
        self._iso_time = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
        self._second = second

    def _text_lines(self, records: Sequence[Record]) -> str:
        lines = []
        for when, client, outcome, reason, duration, bytes_in, bytes_out in records:
            if int(when) != self._second:
                self._times(int(when))
            if type(client) is tuple and len(client) == 2:  # IPv4: the usual case
                client_text = f"{client[0]}:{client[1]}"
            else:
                client_text = _client_text(client)
            lines.append(
                f"{client_text} {self._clf_time} "
                f"{outcome if reason is None else f'{outcome}:{reason}'} "
                f"{'-' if duration is None else f'{duration:.4f}'} "
                f"{'-' if bytes_in is None else bytes_in} "
                f"{'-' if bytes_out is None else bytes_out}\n"
            )
        return "".join(lines)

    def _json_lines(self, records: Sequence[Record]) -> str:
        # Written out by hand, not json.dumps: 1 µs instead of 3 per line (measured); only
        # the client and the reason can hold characters JSON must escape. The parts that
        # repeat (the time to the second, the outcome) are made once, not per line.
        lines = []
        outcome_parts = self._json_outcome_parts
        for when, client, outcome, reason, duration, bytes_in, bytes_out in records:
            second = int(when)
            if second != self._second:
                self._times(second)
            if type(client) is tuple and len(client) == 2:
                client_text = f'"{client[0]}:{client[1]}"'
            else:
                client_text = _json_string(_client_text(client))
            if reason is None:
                outcome_part = outcome_parts.get(outcome)
                if outcome_part is None:
                    outcome_part = outcome_parts[outcome] = _json_outcome(outcome, None)
            else:
                outcome_part = _json_outcome(outcome, reason)
            lines.append(
                f'{{"time": "{self._iso_time}.{_MILLIS[int((when - second) * 1000)]}Z", '
                f'"client": {client_text}, {outcome_part}'
                f'"duration": {"null" if duration is None else f"{duration:.6f}"}, '
                f'"bytes_in": {"null" if bytes_in is None else bytes_in}, '
                f'"bytes_out": {"null" if bytes_out is None else bytes_out}}}\n'
            )
        return "".join(lines)

    # -- rotation and closing ----------------------------------------------------------------

    def reopen_soon(self) -> None:
        """Open ``path`` again before the next line (after logrotate moved it).

        Only sets a flag: safe in a signal handler, from any thread.
        """
        self._appender.reopen_soon()

    def close(self) -> None:
        """Write the pending lines and close the file (standard output stays open)."""
        self._appender.close()


def _client_text(client_address: Any) -> str:
    """The client as one field: no spaces, ``-`` for an unnamed Unix socket."""
    if type(client_address) is tuple and len(client_address) == 2:
        return f"{client_address[0]}:{client_address[1]}"
    if not client_address:
        return "-"
    return format_address(client_address).replace(" ", "\\x20")


def _json_outcome(outcome: str, reason: str | None) -> str:
    reason_text = "null" if reason is None else _json_string(reason)
    return f'"outcome": {_json_string(outcome)}, "reason": {reason_text}, '


def _json_string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)
