"""The compiled per-message path of inline-driven handlers, when it was built.

``_fastpath.c`` holds ``StreamReader.data_received`` and ``InlineDriver.resume_parked``
for the one case every ping-pong message takes (the handler parked in its own read,
nothing buffered, the chunk exactly what the read wants); every other case runs the Python
methods, which stay the reference. It is an optional build step (``setup.py``): with no C
compiler the package installs without it and runs the same code in Python, only slower.

``SOCKSERVE_PURE_PYTHON=1`` in the environment keeps it off (the test suite runs the async
tests both ways). ``ACTIVE`` says whether it is in use.
"""

from __future__ import annotations

import collections.abc
import os

from ..line_buffer import LineBuffer
from .flow import FlowControl
from .inline import _HANDOFF, _RAISED, _RESUME, _RETURNED, INLINE_RESUMPTION, InlineDriver
from .streams import _LINE, _SOME, StreamReader
from .writer import StreamWriter

#: Set to a non-empty value other than "0" to run the pure-Python path.
PURE_PYTHON_VARIABLE = "SOCKSERVE_PURE_PYTHON"


def _install() -> bool:
    if os.environ.get(PURE_PYTHON_VARIABLE, "0") not in ("", "0") or not INLINE_RESUMPTION:
        return False
    try:
        from ._fastpath import Read, install  # type: ignore[import-not-found]
    except ImportError:  # not built: no compiler when the package was installed
        return False
    from asyncio.tasks import _enter_task, _leave_task

    methods = install(
        StreamReader,
        InlineDriver,
        StreamWriter,
        LineBuffer,
        FlowControl,
        _enter_task,
        _leave_task,
        _HANDOFF,
        _RETURNED,
        _RAISED,
        _LINE,
        _SOME,
        _RESUME,
    )
    (
        StreamReader.data_received,  # type: ignore[method-assign]
        InlineDriver.resume_parked,  # type: ignore[method-assign]
        StreamReader.readline,  # type: ignore[method-assign]
        StreamReader.read,  # type: ignore[method-assign]
        StreamWriter.drain,  # type: ignore[method-assign]
    ) = methods
    # What readline() and read() return: asyncio takes it as a coroutine (create_task).
    collections.abc.Coroutine.register(Read)
    return True


#: Whether the compiled path is in use in this process.
ACTIVE = _install()
