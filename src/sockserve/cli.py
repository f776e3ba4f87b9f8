"""The ``sockserve`` command: the only module that reads argv, owns signals and exits.

``sockserve demo echo [--host H] [--port P] [--mode M]`` serves the demo echo handler.
``sockserve serve MODULE:HANDLER [--host H] [--port P] [--mode M]`` serves your handler.

Errors a user can fix (a port in use, a bad address, a handler that cannot be found)
print one line to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from . import TCPServer, ThreadingTCPServer, __version__
from .addresses import format_address
from .demo import DEMOS
from .errors import SockserveError

#: Exit status when the command line or the environment is wrong (argparse uses 2 too).
EXIT_USAGE = 2

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9999

MODES: dict[str, type[TCPServer]] = {"threading": ThreadingTCPServer, "sync": TCPServer}
try:
    from . import ForkingTCPServer

    MODES["forking"] = ForkingTCPServer
except ImportError:  # no fork() on this platform
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler = DEMOS[args.name] if args.command == "demo" else _load_handler(args.target)
        server_class = MODES[args.mode]
        server = server_class((args.host, args.port), handler)
    except (SockserveError, OSError, ValueError, LookupError, ImportError) as exc:
        print(f"sockserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ready_line = (
        f"sockserve {__version__}: serving {handler.__name__} on "
        f"{format_address(server.server_address)} ({args.mode}); Ctrl-C stops"
    )
    with server:
        _serve_until_signalled(server, ready_line)
    print("sockserve: stopped", flush=True)
    return 0


def _serve_until_signalled(server: TCPServer, ready_line: str) -> None:
    """Serve on this thread; SIGINT and SIGTERM ask the loop to stop (and are restored).

    The ready line is printed only once the handlers are installed: a supervisor that
    signals as soon as it reads that line must get a clean stop, not a traceback.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()  # called on the loop's own thread: it asks and returns

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(ready_line, flush=True)
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
            default="threading",
            help="concurrency: one thread per connection, one process, or none",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log each connection")
    return parser
