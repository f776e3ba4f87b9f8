"""Logging for the command: ``--log-level`` and ``--log-format text|json`` on stderr.

JSON is one object per line with ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message`` and, when there is one, ``exc_info`` (the formatted traceback), so a log
shipper needs no multi-line parsing.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str, *, logger: str = "") -> None:
    """Send every log record at ``level`` or above to stderr, as text or JSON.

    ``logger``: only that logger's records (``sockserve run`` configures ``sockserve``
    and leaves the root logger to the program it runs); by default, every record.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    configured = logging.getLogger(logger)
    configured.handlers[:] = [handler]
    configured.setLevel(level.upper())
    if logger:
        configured.propagate = False  # once is enough, whatever the program sets up
