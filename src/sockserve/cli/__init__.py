"""The ``sockserve`` command: the only module that reads argv, owns signals and exits.

``sockserve demo echo [--host H] [--port P] [--mode M]`` serves the demo echo handler.
``sockserve serve MODULE:HANDLER [--host H] [--port P] [--mode M]`` serves your handler.

Modes: ``threading`` (a thread per connection), ``pool`` (``--threads`` long-lived
threads), ``prefork`` (``--workers`` processes, each with a pool of ``--threads``),
``forking`` (a process per connection), ``sync`` (one at a time) and ``async`` (one event
loop; the handler's ``handle`` is ``async def``). Without ``--mode``, an async handler
runs in ``async`` mode and any other in ``threading`` mode.

Errors a user can fix (a port in use, a bad address, a handler that cannot be found)
print one line to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import TCPServer, ThreadingTCPServer, ThreadPoolMixIn, ThreadPoolTCPServer, __version__
from ..addresses import format_address
from ..demo import ASYNC_DEMOS, DEMOS
from ..errors import ConfigurationError, SockserveError
from .serving import LoopFailedError, serve_prefork, serve_until_stopped

#: Exit status when the command line or the environment is wrong (argparse uses 2 too).
EXIT_USAGE = 2

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9999

ServerFactory = Callable[[tuple[str, int], Any, argparse.Namespace], Any]


class _DaemonThreadingTCPServer(ThreadingTCPServer):
    daemon_threads = True  # the command bounds its stop; exit never waits on a request


class _DaemonThreadPoolTCPServer(ThreadPoolTCPServer):
    daemon_threads = True


def _threading(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    return _DaemonThreadingTCPServer(address, handler)


def _pool(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    return _DaemonThreadPoolTCPServer(address, handler, max_workers=args.threads)


def _sync(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    return TCPServer(address, handler)


def _forking(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    from .. import ForkingTCPServer

    return ForkingTCPServer(address, handler)


def _prefork(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    from ..prefork import PreforkMixIn

    class PreforkThreadPoolTCPServer(PreforkMixIn, ThreadPoolMixIn, TCPServer):
        """N worker processes, each serving with a bounded pool of threads."""

        daemon_threads = True

    return PreforkThreadPoolTCPServer(
        address,
        handler,
        workers=args.workers,
        max_workers=args.threads,
        graceful_timeout=args.drain_timeout,
    )


def _async(address: tuple[str, int], handler: Any, args: argparse.Namespace) -> Any:
    from ..aio import AsyncTCPServer

    return AsyncTCPServer(address, handler)


MODES: dict[str, ServerFactory] = {
    "threading": _threading,
    "pool": _pool,
    "sync": _sync,
    "async": _async,
}
if hasattr(os, "fork"):
    MODES["forking"] = _forking
    MODES["prefork"] = _prefork


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            handler = ASYNC_DEMOS[args.name]() if args.mode == "async" else DEMOS[args.name]
        else:
            handler = _load_handler(args.target)
        mode = args.mode or ("async" if _is_async_handler(handler) else "threading")
        _check_handler_fits_mode(handler, mode)
        server = MODES[mode]((args.host, args.port), handler, args)
    except (SockserveError, OSError, ValueError, LookupError, ImportError) as exc:
        print(f"sockserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ready_line = (
        f"sockserve {__version__}: serving {handler.__name__} on "
        f"{format_address(server.server_address)} ({mode}); Ctrl-C stops"
    )
    try:
        if mode == "prefork":
            summary = serve_prefork(server, ready_line)
        else:
            summary = serve_until_stopped([server], ready_line, drain_timeout=args.drain_timeout)
    except LoopFailedError as exc:
        print(f"sockserve: error: {exc}", file=sys.stderr)
        return 1
    print(f"sockserve: {summary.describe()}", flush=True)
    return 0


def _is_async_handler(handler: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(handler, "handle", None))


def _check_handler_fits_mode(handler: Any, mode: str) -> None:
    if _is_async_handler(handler) and mode != "async":
        raise ConfigurationError(
            f"{handler.__name__}.handle is async def: serve it with --mode async"
        )
    if mode == "async" and not _is_async_handler(handler):
        raise ConfigurationError(
            f"--mode async needs a handler whose handle is async def; "
            f"{handler.__name__}.handle is not"
        )


def _load_handler(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"handler must be given as MODULE:NAME, got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise LookupError(f"module {module_name!r} has no attribute {attribute!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockserve", description="Serve a socketserver-style request handler."
    )
    parser.add_argument("--version", action="version", version=f"sockserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a built-in demo service")
    demo.add_argument("name", choices=sorted(DEMOS), help="which demo")
    serve = commands.add_parser("serve", help="serve MODULE:HANDLER")
    serve.add_argument("target", help="request handler class, as MODULE:NAME")
    for sub in (demo, serve):
        sub.add_argument("--host", default=DEFAULT_HOST, help="address to bind (%(default)s)")
        sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
        sub.add_argument(
            "--mode",
            choices=sorted(MODES),
            default=None,
            help="concurrency (default: async for an async handler, else threading)",
        )
        sub.add_argument(
            "--workers",
            type=_positive_int,
            default=None,
            help="processes in prefork mode (default: the usable CPUs)",
        )
        sub.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            help="threads per process in pool and prefork modes (default: 64)",
        )
        sub.add_argument(
            "--drain-timeout",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="on SIGINT/SIGTERM, how long in-flight connections may finish (%(default)s)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log each connection")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
