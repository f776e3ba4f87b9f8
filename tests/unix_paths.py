"""Short directories for Unix socket files, whatever pytest's ``--basetemp`` is.

AF_UNIX paths are limited to 108 bytes on Linux (104 on the BSDs); a long temporary
directory would make binding fail for a reason the test is not about.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The longest socket path the tests use, with room to spare under both limits.
MAX_UNIX_PATH = 100
#: Room left in the directory's path for the socket file names the tests use.
NAME_ROOM = 20


@contextmanager
def short_directory(preferred: Path) -> Iterator[Path]:
    """``preferred`` if socket paths in it fit, else a short private one, removed after."""
    if len(os.fsencode(preferred)) <= MAX_UNIX_PATH - NAME_ROOM:
        yield preferred
        return
    fallback = Path(tempfile.mkdtemp(prefix="ss-"))
    try:
        yield fallback
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
