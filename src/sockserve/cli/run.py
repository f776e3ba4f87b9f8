"""``sockserve run [OPTIONS] (-m MODULE | SCRIPT) [ARGS...]``: a program, unchanged, on sockserve.

How it works, in order:

1. ``sys.modules["socketserver"]`` becomes ``sockserve``, before the program imports
   anything, so ``import socketserver`` (and http.server's and xmlrpc.server's own
   imports of it, which happen when they are first imported) get sockserve's classes.
2. A ``policy.ServerPolicy`` is installed: every server the program constructs takes
   ``--max-connections``, and with ``--mode pool --threads N`` its ``ThreadingMixIn``
   servers run on a pool of N threads (``ThreadingMixIn.max_threads``). The policy's
   ``configure`` hooks register each server for the drain and apply what
   ``build.apply_settings`` applies to ``sockserve serve``'s servers, so an option
   added there reaches these servers too.
3. The program runs as ``__main__`` (``runpy``), with ``sys.argv`` =
   ``[SCRIPT or MODULE, *ARGS]``, on the main thread, as ``python`` would run it.

SIGTERM drains every server the program made, in parallel, for ``--drain-timeout``;
their ``serve_forever`` calls return, so the program goes on to its own ending, which
the command waits for until the deadline plus ``serving.STOP_GRACE_SECONDS``, then
stops at once (a second SIGTERM does too). SIGINT is left to the program (Python's
KeyboardInterrupt), since interactive programs handle Ctrl-C themselves. A SIGTERM
before any server exists takes its default action. A pre-fork master the program runs
installs its own handlers and stops its workers itself.

Exit status: the program's (``sys.exit``), 1 if it raised (with Python's traceback),
0 after a stop at once; 2 for a mistake in the command line (one line, as ``serve``).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import ConfigurationError
from ..metrics import DrainReport
from ..policy import ServerPolicy, install_policy
from .build import apply_settings
from .config import Settings
from .serving import (
    STOP_GRACE_SECONDS,
    Mailbox,
    Stopped,
    StopSummary,
    close_all_quickly,
    signals_recorded,
)

#: The options ``run`` takes (the rest shape servers the program builds itself).
RUN_OPTIONS = ("mode", "threads", "max-connections", "drain-timeout", "log-level", "log-format")
#: The modes that mean something for a program's own servers.
RUN_MODES = ("auto", "threading", "pool")
#: The exit status Python gives a program ended by an uncaught exception.
EXIT_PROGRAM_RAISED = 1


@dataclass(frozen=True)
class Program:
    """What to run: ``module`` (``-m``) or ``path`` (a script), and its arguments."""

    module: str | None
    path: str | None
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.module or self.path or ""


def split_program(args: Sequence[str], takes_value: set[str]) -> tuple[list[str], Program | None]:
    """``run``'s own options, and the program: ``-m MODULE`` or the first non-option.

    As with ``python`` and ``coverage run``, everything after the program's name is its
    own, options included (``sockserve run -m http.server --bind 127.0.0.1``).
    """
    own: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m":
            if index + 1 >= len(args):
                raise ConfigurationError("-m needs a module name (see sockserve run --help)")
            return own, Program(args[index + 1], None, tuple(args[index + 2 :]))
        if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            return own, Program(arg[2:], None, tuple(args[index + 1 :]))
        if arg == "--":
            rest = args[index + 1 :]
            return own, (Program(None, rest[0], tuple(rest[1:])) if rest else None)
        if not arg.startswith("-") or arg == "-":
            return own, Program(None, arg, tuple(args[index + 1 :]))
        own.append(arg)
        if arg in takes_value:
            if index + 1 < len(args):
                own.append(args[index + 1])
            index += 1
        index += 1
    return own, None


def check_settings(settings: Settings) -> None:
    """Refuse what cannot apply to a program's own servers, with one line."""
    mode = settings["mode"]
    if mode not in RUN_MODES:
        raise ConfigurationError(
            f"sockserve run: --mode {mode} does not apply: the program builds its own "
            "servers; use --mode pool (with --threads) to bound its threading servers"
        )
    if settings.given("threads") and mode != "pool":
        raise ConfigurationError("--threads applies to --mode pool only")


class ServerRegistry:
    """The servers the program built, held weakly (a server it dropped is not kept)."""

    def __init__(self) -> None:
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, server: Any) -> None:
        with self._lock:
            self._servers.add(server)

    def live(self) -> list[Any]:
        with self._lock:
            return list(self._servers)


class DrainOnSigterm:
    """SIGTERM drains every registered server; the second, or the deadline, stops at once.

    The signal handler (main thread) only posts; a watcher thread drains, so the
    program's ``serve_forever`` on the main thread returns as the drain begins.
    """

    def __init__(self, registry: ServerRegistry, drain_timeout: float) -> None:
        self._registry = registry
        self._drain_timeout = drain_timeout
        self._events = Mailbox()
        self._signals = signals_recorded(
            self._on_signal, wake_fd=self._events.wake_fd(), signals=(signal.SIGTERM,)
        )
        self._program_ended = threading.Event()
        self._drained = threading.Event()
        self._deadline: float | None = None

    def __enter__(self) -> DrainOnSigterm:
        self._signals.__enter__()
        threading.Thread(target=self._watch, name="sockserve-run-stopper", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._signals.__exit__()

    def program_ended(self) -> None:
        """The program returned (or raised): wait for a drain under way, to its deadline."""
        self._program_ended.set()
        deadline = self._deadline
        if deadline is not None:
            self._drained.wait(max(0.0, deadline - time.monotonic()))

    def _on_signal(self, signum: int) -> None:
        if self._deadline is None and not self._registry.live():
            # Nothing to drain: the default action, as if sockserve were not there.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._events.post(signum)

    def _watch(self) -> None:
        if not isinstance(self._events.wait(), int):
            return
        started = time.monotonic()
        self._deadline = started + self._drain_timeout + STOP_GRACE_SECONDS
        servers = self._registry.live()
        print(
            f"sockserve: stopping: draining {len(servers)} server(s) for up to "
            f"{self._drain_timeout:g} s (a second SIGTERM stops at once)",
            flush=True,
        )
        threading.Thread(
            target=self._drain_all, args=(servers,), name="sockserve-drain", daemon=True
        ).start()
        while True:
            event = self._events.wait(max(0.0, self._deadline - time.monotonic()))
            if isinstance(event, Stopped):
                summary = StopSummary(event.reports, time.monotonic() - started)
                print(f"sockserve: {summary.describe()}", flush=True)
                self._drained.set()
                if self._program_ended.wait(max(0.0, self._deadline - time.monotonic())):
                    return
                reason = "the program did not end after its servers drained"
                break
            if isinstance(event, int):
                reason = f"second {signal.Signals(event).name}"
                break
            if event is None:
                reason = "the drain overran its deadline"
                break
        close_all_quickly(servers)
        summary = StopSummary((), time.monotonic() - started, at_once=True, reason=reason)
        print(f"sockserve: {summary.describe()}", flush=True)
        sys.stderr.flush()
        os._exit(0)

    def _drain_all(self, servers: list[Any]) -> None:
        reports: list[DrainReport] = []

        def drain(server: Any) -> None:
            try:
                reports.append(server.drain(self._drain_timeout))
            except Exception as exc:  # e.g. the program closed it meanwhile
                print(f"sockserve: warning: draining {server!r} failed: {exc}", file=sys.stderr)

        drainers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in servers]
        for drainer in drainers:
            drainer.start()
        for drainer in drainers:
            drainer.join()
        self._events.post(Stopped(tuple(reports)))


def install_sockserve_as_socketserver() -> None:
    """``import socketserver`` gives sockserve from now on (the stdlib's stays loaded
    for the command's own use, under no name a program imports)."""
    import sockserve

    sys.modules["socketserver"] = sockserve


def run_program(program: Program, settings: Settings) -> int:
    """Run ``program`` under sockserve's policies (see the module docstring)."""
    _check_program(program)
    install_sockserve_as_socketserver()
    registry = ServerRegistry()
    threads = settings["threads"] if settings["mode"] == "pool" else None
    if settings["mode"] == "pool" and threads is None:
        from ..mixins import DEFAULT_MAX_WORKERS

        threads = DEFAULT_MAX_WORKERS
    install_policy(
        ServerPolicy(
            max_connections=settings["max-connections"],
            max_threads=threads,
            configure=(registry.add, partial(apply_settings, settings=settings)),
        )
    )
    with DrainOnSigterm(registry, settings["drain-timeout"]) as stopper:
        try:
            return _run_as_main(program)
        finally:
            stopper.program_ended()


def _check_program(program: Program) -> None:
    if program.module is not None:
        try:
            found = importlib.util.find_spec(program.module)
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(f"-m {program.module}: {exc}") from None
        if found is None:
            raise ConfigurationError(f"no module named {program.module!r}")
    elif program.path is not None and not os.path.exists(program.path):
        raise ConfigurationError(f"no file {program.path!r}")


def _run_as_main(program: Program) -> int:
    sys.argv = [program.name, *program.args]
    try:
        if program.module is not None:
            sys.path[0] = os.getcwd()  # as ``python -m`` does
            runpy.run_module(program.module, run_name="__main__", alter_sys=True)
        else:
            assert program.path is not None
            sys.path[0] = os.path.dirname(os.path.abspath(program.path))  # as ``python FILE``
            runpy.run_path(program.path, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        return EXIT_PROGRAM_RAISED
    return 0


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter does with sys.exit("message")
    return 1
