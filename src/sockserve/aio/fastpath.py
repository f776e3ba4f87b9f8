"""The compiled per-message path of inline-driven handlers, chosen once, explicitly.

``_fastpath.c`` holds ``StreamReader.data_received``, ``readline``, ``read``,
``InlineDriver.resume_parked``, ``StreamWriter.drain`` and ``write`` for the one case every
ping-pong message takes (the handler parked in its own read, nothing buffered, the chunk
exactly what the read wants); every other case runs the Python methods, which stay the
reference. It is an optional build step (``setup.py``): with no C compiler the package
installs without it and runs the same code in Python, only slower.

How it is switched on: ``select()`` picks an ``Implementation``, the three classes a
connection is built from, and it is called in one place, at the bottom of this module
(``IMPLEMENTATION``), which ``connections.py`` uses. The compiled implementation is a set
of subclasses of the Python classes, made once per process by ``compiled()``, that
override the six methods with the C ones; the Python classes (``streams.StreamReader``,
``writer.StreamWriter``, ``inline.InlineDriver``) are never changed, so both paths can
run side by side (``tests/test_aio_both_paths.py``). The state both share is defined
once, by the Python classes' ``__slots__``, which the C code reads by offset.

The switch: ``SOCKSERVE_PURE_PYTHON=1`` in the environment selects the Python classes
(the test suite runs the async tests both ways). ``ACTIVE`` says which is in use.
"""

from __future__ import annotations

import collections.abc
import os
from dataclasses import dataclass
from typing import Any

from ..line_buffer import LineBuffer
from .flow import FlowControl
from .inline import _HANDOFF, _RAISED, _RESUME, _RETURNED, INLINE_RESUMPTION, InlineDriver
from .parking import LINE as _LINE
from .parking import SOME as _SOME
from .streams import StreamReader
from .writer import StreamWriter

__all__ = ["ACTIVE", "IMPLEMENTATION", "PURE_PYTHON", "Implementation", "compiled", "select"]

#: Set to a non-empty value other than "0" to run the pure-Python path.
PURE_PYTHON_VARIABLE = "SOCKSERVE_PURE_PYTHON"


@dataclass(frozen=True)
class Implementation:
    """The classes a stream connection is built from."""

    is_compiled: bool
    reader_class: type[StreamReader]
    writer_class: type[StreamWriter]
    driver_class: type[InlineDriver]


#: The reference implementation: the Python classes themselves.
PURE_PYTHON = Implementation(False, StreamReader, StreamWriter, InlineDriver)

_compiled: Implementation | None = None


def compiled() -> Implementation | None:
    """The compiled implementation (made on the first call); None if it was not built.

    It ignores ``SOCKSERVE_PURE_PYTHON``: that variable is for ``select()``. Tests call
    this to run both paths in one process.
    """
    global _compiled
    if _compiled is not None or not INLINE_RESUMPTION:
        return _compiled
    try:
        from ._fastpath import Read, install  # type: ignore[import-not-found]
    except ImportError:  # not built: no compiler when the package was installed
        return None
    from asyncio.tasks import _enter_task, _leave_task

    class CompiledStreamReader(StreamReader):
        """``StreamReader`` with its per-message methods compiled (``_fastpath.c``)."""

        __slots__ = ()

    class CompiledInlineDriver(InlineDriver):
        """``InlineDriver`` with ``resume_parked`` compiled (``_fastpath.c``)."""

        __slots__ = ()

    class CompiledStreamWriter(StreamWriter):
        """``StreamWriter`` with ``drain`` and ``write`` compiled (``_fastpath.c``)."""

        __slots__ = ()

    methods: tuple[Any, ...] = install(
        CompiledStreamReader,
        CompiledInlineDriver,
        CompiledStreamWriter,
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
    # The subclasses get their C methods here, once, before anything else has seen them
    # (the Python classes are never touched). Not in the class bodies: a method
    # descriptor must be made for the exact class whose instances call it, because the
    # interpreter's specialised call (3.11's PRECALL_NO_KW_METHOD_DESCRIPTOR_*) checks
    # the instance's type *is* the descriptor's class and otherwise takes the generic
    # path every time: descriptors made for the base classes cost 630 instructions per
    # message more (callgrind, bench/inprocess_echo.py).
    for cls, name, method in zip(
        (
            CompiledStreamReader,
            CompiledInlineDriver,
            CompiledStreamReader,
            CompiledStreamReader,
            CompiledStreamWriter,
            CompiledStreamWriter,
        ),
        ("data_received", "resume_parked", "readline", "read", "drain", "write"),
        methods,
        strict=True,
    ):
        setattr(cls, name, method)
    # What readline() and read() return: asyncio takes it as a coroutine (create_task).
    collections.abc.Coroutine.register(Read)
    _compiled = Implementation(
        True, CompiledStreamReader, CompiledStreamWriter, CompiledInlineDriver
    )
    return _compiled


def select() -> Implementation:
    """The compiled implementation if it was built and is wanted, else ``PURE_PYTHON``."""
    if os.environ.get(PURE_PYTHON_VARIABLE, "0") not in ("", "0"):
        return PURE_PYTHON
    return compiled() or PURE_PYTHON


#: What the server builds its connections from: chosen here, once per process.
IMPLEMENTATION = select()

#: Whether the compiled path is in use in this process.
ACTIVE = IMPLEMENTATION.is_compiled
