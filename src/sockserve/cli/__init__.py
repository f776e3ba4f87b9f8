"""The ``sockserve`` command: the only code that reads argv, owns signals and exits.

``sockserve demo NAME`` serves a built-in demo; ``sockserve serve TARGET`` serves your
handler class (or the server your factory builds); ``sockserve run -m MODULE`` runs a
socketserver program on sockserve. Where the parts live:

- ``options.py``: the option table (one row per setting);
- ``config.py``: command line > environment > config file > default;
- ``binds.py``: ``--bind`` forms; ``targets.py``: what TARGET names;
- ``build.py``: which server class, the rules on combinations, binding;
- ``privileges.py``, ``logs.py``: ``--user``/``--group``, ``--log-*``;
- ``activation.py``: inherited sockets (``fd://N``, systemd socket activation);
- ``service_manager.py``: READY/STATUS/STOPPING/WATCHDOG for systemd (``NOTIFY_SOCKET``);
- ``observe.py``: ``--access-log`` and ``--metrics``;
- ``serving.py``: serving until a signal, and the drain with a deadline;
- ``run.py``: ``sockserve run``: a program's own servers, under ``policy.py``.

Exit status: 0 after a stop by signal; 2 for a mistake the user can fix (one line on
stderr, ``sockserve: error: ...``, no traceback); 1 if serving failed once started (a
serve loop raised, a pre-fork worker failed to boot).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__, errors
from ..demo import ASYNC_DEMOS, DEMOS

# Modules, not names: only what ``__all__`` lists is public here.
from . import (
    binds,
    build,
    config,
    logs,
    observe,
    options,
    privileges,
    run,
    service_manager,
    serving,
    targets,
)

#: Exit status for a mistake in the command line, environment or config (argparse's too).
EXIT_USAGE = 2
#: Exit status when a serve loop failed by itself.
EXIT_FAILED = 1

EXAMPLES = f"""\
examples:
  sockserve demo echo                                 echo on 127.0.0.1:9999
  sockserve demo chargen --port 0 --mode async        any free port, one event loop
  sockserve serve myapp:Handler --bind tcp://0.0.0.0:8000 --bind unix:/run/my.sock
  sockserve serve ./handlers.py:Upper --mode prefork --workers 4 --threads 16
  sockserve serve myapp:make_server --bind fd://3     a factory, an inherited socket
  sockserve serve myapp:Handler --bind systemd        socket activation (a .socket unit)
  SOCKSERVE_DRAIN_TIMEOUT=5 sockserve serve myapp:Handler --config sockserve.toml
  sockserve serve myapp:Handler --config sockserve.toml --print-config

SIGINT or SIGTERM drains (--drain-timeout), a second one stops at once; the process
is gone within the drain timeout plus {serving.STOP_GRACE_SECONDS:g} s. Settings: command line >
SOCKSERVE_<OPTION> > --config FILE (TOML, keys as the long options) > default.
Exit status: 0 stopped by a signal, 1 a serve loop failed, 2 a usage mistake.
"""


RUN_EXAMPLES = f"""\
examples:
  sockserve run --mode pool --threads 8 -m http.server 8000 --bind 127.0.0.1
  sockserve run --max-connections 100 --drain-timeout 10 ./my_xmlrpc_service.py --port 0

Every server the program builds takes the options: --mode pool --threads N runs its
ThreadingMixIn servers on N threads. SIGTERM drains them all (--drain-timeout), then
the program ends as it would; it is gone within the drain timeout plus
{serving.STOP_GRACE_SECONDS:g} s. SIGINT is the program's own (KeyboardInterrupt).
"""

#: ``run`` options followed by a value (the rest of its arguments are the program's).
_RUN_VALUE_OPTIONS = {f"--{name}" for name in run.RUN_OPTIONS} | {"--config"}


class UsageError(errors.SockserveError):
    """The command line cannot be parsed (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see sockserve --help)")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        program = None
        if arguments[:1] == ["run"]:  # the program's own arguments are not ours to parse
            own, program = run.split_program(arguments[1:], _RUN_VALUE_OPTIONS)
            arguments = ["run", *own]
        args = _parser().parse_args(arguments)
        args.program = program
        return _run(args)
    except (errors.SockserveError, OSError, ValueError) as exc:
        print(f"sockserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    given = {o.name: getattr(args, o.key) for o in options.OPTIONS if hasattr(args, o.key)}
    settings = config.merge(given, os.environ, args.config)
    for warning in settings.warnings:
        print(f"sockserve: warning: {warning}", file=sys.stderr)
    if args.print_config:
        print(config.render_toml(settings))
        return 0
    if args.command == "run":
        if args.program is None:
            raise UsageError("sockserve run needs -m MODULE or SCRIPT (see sockserve run --help)")
        run.check_settings(settings)
        logs.configure(settings["log-level"], settings["log-format"], logger="sockserve")
        return run.run_program(args.program, settings)
    logs.configure(settings["log-level"], settings["log-format"])
    if args.command == "demo":
        mode = settings["mode"]
        demo = ASYNC_DEMOS[args.name]() if mode == "async" else DEMOS[args.name]
        target = targets.Target(demo, f"demo {args.name}")
    else:
        target = targets.load_target(args.target)
    plan = build.plan(target, settings)
    identity = privileges.resolve(settings["user"], settings["group"])
    manager = service_manager.ServiceManagerLink.from_environment()
    servers = build.open_servers(plan)
    try:
        observing = observe.Observability(settings, servers)
        try:
            if identity is not None:
                privileges.switch_to(identity)
        except BaseException:
            observing.close()
            raise
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    mode = type(servers[0]).__name__ if plan.mode == "factory" else plan.mode
    ready_line = (
        f"sockserve {__version__}: serving {target.name} on "
        f"{', '.join(binds.describe(server) for server in servers)} ({mode})"
        f"{observing.describe()}; Ctrl-C stops"
    )
    if manager is not None:
        manager.servers = servers
    observing.start()
    try:
        if hasattr(servers[0], "worker_pids"):  # a pre-fork master: one bind (build.RULES)
            summary = serving.serve_prefork(servers[0], ready_line, manager=manager)
        else:
            summary = serving.serve_until_stopped(
                servers, ready_line, drain_timeout=settings["drain-timeout"], manager=manager
            )
    except (serving.LoopFailedError, errors.SockserveError) as exc:  # e.g. a worker failed to boot
        print(f"sockserve: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if manager is not None:
            manager.close()
        observing.close()
    print(f"sockserve: {summary.describe()}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sockserve",
        description="Serve a socketserver-style request handler.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sockserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a built-in demo service",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("name", choices=sorted(DEMOS), help="which demo")
    serve = commands.add_parser(
        "serve",
        help="serve TARGET: MODULE:NAME or PATH.py:NAME",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "target", help="a request handler class, or a server factory: MODULE:NAME or PATH.py:NAME"
    )
    runner = commands.add_parser(
        "run",
        help="run a socketserver program on sockserve: sockserve run [OPTIONS] "
        "(-m MODULE | SCRIPT) [ARGS...]",
        usage="sockserve run [OPTIONS] (-m MODULE | SCRIPT) [ARGS...]",
        description="Run a program that uses socketserver (http.server, xmlrpc.server, "
        "your own) with sockserve in its place: no code changed.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for sub in (demo, serve):
        _add_options(sub)
    _add_options(runner, only=run.RUN_OPTIONS)
    return parser


def _add_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    for option in options.OPTIONS:
        if only is not None and option.name not in only:
            continue
        default = "" if option.default in (None, []) else f" (default: {option.default})"
        unset = f" (default: {option.unset})" if option.unset else ""
        kwargs: dict[str, Any] = {
            "dest": option.key,
            "default": argparse.SUPPRESS,
            "metavar": option.metavar or option.name.split("-")[-1].upper(),
            "help": option.help + (unset or default),
        }
        if option.many:
            kwargs["action"] = "append"
        parser.add_argument(option.flag, **kwargs)
    parser.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="info",
        default=argparse.SUPPRESS,
        help="the same as --log-level info (logs each connection)",
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    parser.add_argument(
        "--print-config", action="store_true", help="print the merged settings (TOML) and exit"
    )


__all__ = ["UsageError", "main"]
