"""The public surface: what ``import sockserve as socketserver`` code relies on.

Every name, class attribute, default and hook of the standard library's ``socketserver``
exists here with the same meaning (and the documented deliberate differences hold); the
class hierarchy and mixin order are the stdlib's; the private names real code pokes at
still work; ``__all__`` lists exactly the names sockserve defines; and the modules import
each other only in the direction data flows (an earlier stage never imports a later one).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import socket
import socketserver
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0

#: Names ``socketserver`` gained after Python 3.11 that sockserve has on every Python.
LATER_STDLIB_NAMES = ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


def stdlib_classes() -> dict[str, type]:
    return {
        name: getattr(socketserver, name)
        for name in socketserver.__all__
        if isinstance(getattr(socketserver, name), type)
    }


STDLIB_CLASSES = stdlib_classes()


# -- (a) names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", socketserver.__all__)
def test_every_stdlib_name_exists(name: str) -> None:
    assert hasattr(sockserve, name), f"sockserve lacks socketserver.{name}"
    assert name in sockserve.__all__
    assert isinstance(getattr(sockserve, name), type) == isinstance(
        getattr(socketserver, name), type
    )


@pytest.mark.skipif(
    not (hasattr(os, "fork") and hasattr(socket, "AF_UNIX")),
    reason="the Forking Unix servers need fork() and Unix sockets",
)
@pytest.mark.parametrize("name", LATER_STDLIB_NAMES)
def test_names_from_later_pythons_exist_on_every_python(name: str) -> None:
    assert name in sockserve.__all__
    server_class = getattr(sockserve, name)
    assert issubclass(server_class, sockserve.ForkingMixIn)
    transport = name.removeprefix("Forking")
    assert issubclass(server_class, getattr(sockserve, transport))


@pytest.mark.parametrize("name", sorted(STDLIB_CLASSES))
def test_subclass_relations_match_the_stdlib(name: str) -> None:
    """If ``socketserver.A`` derives from ``socketserver.B``, so do sockserve's."""
    ours = getattr(sockserve, name)
    for other_name, other in STDLIB_CLASSES.items():
        if issubclass(STDLIB_CLASSES[name], other):
            assert issubclass(ours, getattr(sockserve, other_name)), (
                f"sockserve.{name} should derive from sockserve.{other_name}"
            )


# -- (b) __all__ lists exactly what sockserve defines ------------------------------------


def names_defined_in_sockserve(module: types.ModuleType) -> set[str]:
    """Public names whose objects were defined in a sockserve module (classes, functions).

    Submodules show up in ``dir()`` once imported; they are modules, not names with a
    ``__module__``, so they are left out, as CPython's ``test_all`` leaves them out.
    """
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and str(getattr(getattr(module, name), "__module__", "")).startswith("sockserve")
    }


def test_all_lists_exactly_the_names_sockserve_defines() -> None:
    assert len(sockserve.__all__) == len(set(sockserve.__all__)), "duplicates in __all__"
    defined = names_defined_in_sockserve(sockserve)
    assert set(sockserve.__all__) - defined == set(), "in __all__ but not defined here"
    assert defined - set(sockserve.__all__) == set(), "public but missing from __all__"


def test_star_import_gives_the_stdlib_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from sockserve import *", namespace)
    for name in socketserver.__all__:
        assert namespace[name] is getattr(sockserve, name)


def sockserve_modules() -> list[str]:
    names = ["sockserve"]
    for info in pkgutil.walk_packages(sockserve.__path__, prefix="sockserve."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the command
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", sockserve_modules())
def test_every_all_in_the_package_is_honest(module_name: str) -> None:
    """Wherever a module declares ``__all__``: no duplicates, every name exists, and every
    class or function it defines publicly is listed (data constants may be listed too)."""
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(exported) == len(set(exported)), f"duplicates in {module_name}.__all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names what it lacks"
    if hasattr(module, "__path__"):  # a package: its __init__ gathers its public names
        unlisted = names_defined_in_sockserve(module) - set(exported)
        assert unlisted == set(), f"public in {module_name} but missing from its __all__"


# -- (c) class attributes and defaults ---------------------------------------------------

#: Attributes whose value must equal the stdlib's wherever the stdlib class has them.
SAME_AS_STDLIB = [
    "address_family",
    "socket_type",
    "allow_reuse_address",
    "allow_reuse_port",
    "timeout",
    "daemon_threads",
    "block_on_close",
    "max_children",
    "rbufsize",
    "wbufsize",
]


def attribute_cases() -> list[tuple[str, str]]:
    return [
        (class_name, attribute)
        for class_name, cls in sorted(STDLIB_CLASSES.items())
        for attribute in SAME_AS_STDLIB
        if hasattr(cls, attribute)
    ]


@pytest.mark.parametrize(("class_name", "attribute"), attribute_cases())
def test_class_attribute_equals_the_stdlib(class_name: str, attribute: str) -> None:
    ours = getattr(getattr(sockserve, class_name), attribute)
    theirs = getattr(STDLIB_CLASSES[class_name], attribute)
    assert ours == theirs
    assert type(ours) is type(theirs) or isinstance(ours, type(theirs))


def test_the_attributes_users_rely_on_are_all_covered() -> None:
    covered = {attribute for _, attribute in attribute_cases()}
    assert covered == set(SAME_AS_STDLIB)


def test_defaults_spelled_out() -> None:
    """The same values, stated plainly (a reader need not know the stdlib's)."""
    assert sockserve.BaseServer.timeout is None
    assert sockserve.TCPServer.address_family == socket.AF_INET
    assert sockserve.TCPServer.socket_type == socket.SOCK_STREAM
    assert sockserve.UDPServer.socket_type == socket.SOCK_DGRAM
    for server_class in (sockserve.TCPServer, sockserve.UDPServer):
        assert server_class.allow_reuse_address is False
        assert server_class.allow_reuse_port is False
    assert sockserve.ThreadingMixIn.daemon_threads is False
    assert sockserve.ThreadingMixIn.block_on_close is True
    assert sockserve.StreamRequestHandler.rbufsize == -1
    assert sockserve.StreamRequestHandler.wbufsize == 0
    assert sockserve.StreamRequestHandler.timeout is None


@needs_fork
def test_forking_mixin_defaults() -> None:
    assert sockserve.ForkingMixIn.timeout == socketserver.ForkingMixIn.timeout == 300
    assert sockserve.ForkingMixIn.max_children == socketserver.ForkingMixIn.max_children
    assert sockserve.ForkingMixIn.block_on_close is socketserver.ForkingMixIn.block_on_close
    assert sockserve.ForkingTCPServer.timeout == 300  # the mixin's, ahead of BaseServer's


@needs_unix
def test_unix_servers_use_af_unix() -> None:
    assert sockserve.UnixStreamServer.address_family == socket.AF_UNIX
    assert sockserve.UnixDatagramServer.address_family == socket.AF_UNIX
    assert sockserve.UnixDatagramServer.socket_type == socket.SOCK_DGRAM


def test_documented_deliberate_differences() -> None:
    """docs/compatibility.md: each changed because the stdlib's value hurts real traffic."""
    for server_class in (sockserve.TCPServer, sockserve.ThreadingTCPServer):
        assert server_class.request_queue_size == socket.SOMAXCONN
    assert sockserve.UDPServer.max_packet_size == 65535
    assert sockserve.ThreadingUDPServer.max_packet_size == 65535
    assert sockserve.StreamRequestHandler.disable_nagle_algorithm is True
    # ... and they really are differences, not the stdlib's values restated.
    assert socketserver.TCPServer.request_queue_size == 5
    assert socketserver.UDPServer.max_packet_size == 8192
    assert socketserver.StreamRequestHandler.disable_nagle_algorithm is False


def test_a_bound_server_reports_its_real_address() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), sockserve.BaseRequestHandler) as server:
        host, port = server.server_address
        assert (host, port) == server.socket.getsockname()
        assert port != 0
        assert server.RequestHandlerClass is sockserve.BaseRequestHandler
    assert server.socket.fileno() == -1


# -- (d) hooks and their signatures ------------------------------------------------------

#: Hook methods and the sockserve class that must offer each.
HOOKS: dict[str, list[str]] = {
    "BaseServer": [
        "server_activate",
        "verify_request",
        "process_request",
        "finish_request",
        "handle_error",
        "handle_timeout",
        "shutdown_request",
        "close_request",
        "service_actions",
        "server_close",
        "serve_forever",
        "handle_request",
        "shutdown",
        "__enter__",
        "__exit__",
    ],
    "TCPServer": ["server_bind", "get_request", "fileno"],
    "UDPServer": ["server_bind", "get_request", "fileno", "server_activate"],
    "ThreadingMixIn": ["process_request", "process_request_thread", "server_close"],
    "ForkingMixIn": [
        "collect_children",
        "process_request",
        "handle_timeout",
        "service_actions",
        "server_close",
    ],
    "BaseRequestHandler": ["setup", "handle", "finish"],
    "StreamRequestHandler": ["setup", "finish"],
    "DatagramRequestHandler": ["setup", "finish"],
}


def hook_cases() -> list[tuple[str, str]]:
    cases = [(class_name, hook) for class_name, hooks in HOOKS.items() for hook in hooks]
    # Plus every public method of every stdlib class, wherever the stdlib has it.
    for class_name, cls in sorted(STDLIB_CLASSES.items()):
        for name, _ in inspect.getmembers(cls, inspect.isfunction):
            is_public = not name.startswith("_") or name in ("__enter__", "__exit__")
            if is_public and (class_name, name) not in cases:
                cases.append((class_name, name))
    return [case for case in cases if hasattr(sockserve, case[0])]


def describe(parameters: list[inspect.Parameter]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize(("class_name", "hook"), hook_cases())
def test_hook_exists_with_the_stdlib_signature(class_name: str, hook: str) -> None:
    ours = getattr(getattr(sockserve, class_name), hook, None)
    assert callable(ours), f"sockserve.{class_name}.{hook} is missing"
    theirs = getattr(getattr(socketserver, class_name, None), hook, None)
    if theirs is None:
        return  # not in this Python's socketserver (or not on that class)
    ours_parameters = describe(list(inspect.signature(ours).parameters.values()))
    theirs_parameters = describe(list(inspect.signature(theirs).parameters.values()))
    assert ours_parameters == theirs_parameters


@pytest.mark.parametrize(
    "class_name",
    [
        name
        for name, cls in sorted(STDLIB_CLASSES.items())
        if "__init__" in vars(cls) or issubclass(cls, socketserver.BaseServer)
    ],
)
def test_constructor_accepts_the_stdlib_arguments(class_name: str) -> None:
    """The stdlib's parameters first, the same; sockserve's own only as keywords."""
    ours = list(inspect.signature(getattr(sockserve, class_name).__init__).parameters.values())
    theirs = list(inspect.signature(STDLIB_CLASSES[class_name].__init__).parameters.values())
    assert describe(ours[: len(theirs)]) == describe(theirs)
    for extra in ours[len(theirs) :]:
        if extra.kind is inspect.Parameter.VAR_KEYWORD:
            # A typed group of optional keywords (``**client_limits: Unpack[...]``).
            assert "Unpack[" in str(extra.annotation), extra.name
            continue
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY, extra.name
        assert extra.default is not inspect.Parameter.empty, extra.name


# -- (e) class hierarchy and the mixin contract ------------------------------------------


@pytest.mark.parametrize("name", sorted(STDLIB_CLASSES))
def test_mro_mirrors_the_stdlib(name: str) -> None:
    ours = [cls.__name__ for cls in getattr(sockserve, name).__mro__]
    theirs = [cls.__name__ for cls in STDLIB_CLASSES[name].__mro__]
    assert ours == theirs


@pytest.mark.skipif(
    not (hasattr(os, "fork") and hasattr(socket, "AF_UNIX")),
    reason="the Forking Unix servers need fork() and Unix sockets",
)
def test_mro_of_the_later_forking_unix_servers() -> None:
    assert [c.__name__ for c in sockserve.ForkingUnixStreamServer.__mro__] == [
        "ForkingUnixStreamServer",
        "ForkingMixIn",
        "UnixStreamServer",
        "TCPServer",
        "BaseServer",
        "object",
    ]
    assert [c.__name__ for c in sockserve.ForkingUnixDatagramServer.__mro__] == [
        "ForkingUnixDatagramServer",
        "ForkingMixIn",
        "UnixDatagramServer",
        "UDPServer",
        "TCPServer",
        "BaseServer",
        "object",
    ]


def test_threading_tcp_server_mro() -> None:
    assert sockserve.ThreadingTCPServer.__mro__ == (
        sockserve.ThreadingTCPServer,
        sockserve.ThreadingMixIn,
        sockserve.TCPServer,
        sockserve.BaseServer,
        object,
    )


class Reporter(sockserve.StreamRequestHandler):
    """Replies with the name of the thread that ran it."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(threading.current_thread().name.encode() + b"\n")


def ask(address: Any) -> bytes:
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as client:
        client.sendall(b"hi\n")
        with client.makefile("rb") as replies:
            return replies.readline()


def test_user_defined_threading_server_uses_the_mixin() -> None:
    class S(sockserve.ThreadingMixIn, sockserve.TCPServer):
        pass

    assert S.process_request is sockserve.ThreadingMixIn.process_request
    assert S.server_close is sockserve.ThreadingMixIn.server_close
    with serve_in_thread(S(("127.0.0.1", 0), Reporter)) as server:
        serving_thread = threading.current_thread().name
        reply = ask(server.server_address).strip().decode()
    assert reply
    assert reply != serving_thread
    assert not reply.startswith("serve_in_thread")  # not the loop's thread either
    assert server.socket.fileno() == -1


def test_user_mixin_in_front_of_a_sockserve_mixin() -> None:
    """A user's own mixin overriding ``process_request`` and calling ``super()``."""
    seen: list[Any] = []

    class Recording:
        def process_request(self, request: Any, client_address: Any) -> None:
            seen.append(client_address)
            super().process_request(request, client_address)  # type: ignore[misc]

    class S(Recording, sockserve.ThreadingMixIn, sockserve.TCPServer):
        pass

    with serve_in_thread(S(("127.0.0.1", 0), Reporter)) as server:
        assert ask(server.server_address).endswith(b"\n")
    assert len(seen) == 1
    assert seen[0][0] == "127.0.0.1"


# -- (f) private names that real code pokes at ------------------------------------------


def test_shutdown_request_flag_stops_the_loop() -> None:
    """``server._BaseServer__shutdown_request = True`` stops serve_forever (stdlib trick)."""
    server = sockserve.TCPServer(("127.0.0.1", 0), sockserve.BaseRequestHandler)
    try:
        assert server._BaseServer__shutdown_request is False  # type: ignore[attr-defined]
        stopped = server._BaseServer__is_shut_down  # type: ignore[attr-defined]
        assert isinstance(stopped, threading.Event)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        server._BaseServer__shutdown_request = True  # type: ignore[attr-defined]
        assert stopped.wait(CLIENT_TIMEOUT), "serve_forever ignored the flag"
        thread.join(CLIENT_TIMEOUT)
        assert not thread.is_alive()
        assert server._BaseServer__shutdown_request is False  # type: ignore[attr-defined]
    finally:
        server.server_close()


class Gated(sockserve.StreamRequestHandler):
    """Tells the test it started (and on which thread), then waits to be let go."""

    started: threading.Event
    release: threading.Event
    threads: list[threading.Thread]

    def handle(self) -> None:
        self.threads.append(threading.current_thread())
        self.started.set()
        self.release.wait(CLIENT_TIMEOUT)
        self.wfile.write(b"done\n")


def test_threads_attribute_len_iteration_and_join() -> None:
    class Handler(Gated):
        started = threading.Event()
        release = threading.Event()
        threads: list[threading.Thread] = []

    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    try:
        assert len(server._threads) == 0
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            server.handle_request()  # starts the request's thread
            assert Handler.started.wait(CLIENT_TIMEOUT)
            assert len(server._threads) == 1
            assert list(server._threads) == Handler.threads
            Handler.release.set()
            server._threads.join()
            assert not Handler.threads[0].is_alive()
            assert len(server._threads) == 0
            with client.makefile("rb") as replies:
                assert replies.readline() == b"done\n"
    finally:
        Handler.release.set()
        server.server_close()


@needs_fork
@pytest.mark.filterwarnings(
    # Python 3.12+ warns when fork() runs in a process that has threads (faulthandler's
    # watchdog, other tests' leftovers); the child here only runs a handler and exits.
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)
def test_active_children_before_and_after_a_fork() -> None:
    class ReportPid(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(f"{os.getpid()}\n".encode())

    server = sockserve.ForkingTCPServer(("127.0.0.1", 0), ReportPid)
    try:
        assert server.active_children is None  # as in the stdlib, until the first fork
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            server.handle_request()  # forks the child that serves the client
            with client.makefile("rb") as replies:
                child = int(replies.readline())
        assert child != os.getpid()
        assert child in server.active_children  # type: ignore[operator]
        assert len(server.active_children) == 1  # type: ignore[arg-type]
        server.collect_children(blocking=True)
        assert not server.active_children
        assert len(server.active_children) == 0  # type: ignore[arg-type]
    finally:
        server.server_close()


# -- (g) layering: data flows one way, and so do imports ---------------------------------

#: The stages in the order a connection meets them. A module may import modules of its own
#: stage or of an earlier one, never of a later one. ``errors``, ``addresses`` and
#: ``metrics`` are leaves anyone may import. A module missing here fails the test: a new
#: module must be given its place.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "addresses", "metrics", "episodes", "policy"),
    ("listeners", "listener_stop", "sockets", "systemd", "tcp_info"),
    ("log_batches", "access_log"),
    # Who the peer really is and what its first bytes say: pure decisions and parsers.
    (
        "access",
        "client_limits",
        "line_buffer",
        "slow_clients",
        "proxy_protocol",
        "proxy_protocol.*",
        "tls",
        "tls_handshake",
    ),
    ("admission", "admission.*"),
    ("dispatch", "dispatch.*"),
    ("handlers", "handler_errors"),
    # The serving core: the request's job, the core, then the selector loop driving it.
    ("serving.connection_watch",),
    ("serving.job",),
    ("serving.traffic",),
    ("serving.core",),
    ("serving.loop_threads", "serving.pending_preludes"),
    ("serving.selector_loop", "serving"),
    ("servers", "servers.*"),
    ("mixins",),
    # The pre-fork pool: worker side, process plumbing, the supervising master, the mixin.
    ("prefork.worker",),
    (
        "prefork.process",
        "prefork.actions",
        "prefork.backoff",
        "prefork.deadlines",
        "prefork.status",
    ),
    ("prefork.master",),
    ("prefork",),
    # The async mode is a second facade over the same listener and admission stages,
    # layered like the synchronous path inside.
    (
        "aio.loop",
        "aio.watchdog",
        "aio.flow",
        "aio.gathered_sends",
        "aio.parking",
        "aio.receive_switch",
        "aio.bulk_reads",
        "aio.streams",
        "aio.sendfile",
        "aio.writer",
        "aio.inline",
        "aio.datagrams",
        "aio.preludes",
        "aio.endings",
    ),
    ("aio._fastpath",),  # compiled (optional): it imports nothing of the package
    ("aio.handlers", "aio.fastpath"),
    ("aio.opening",),
    ("aio.connections",),
    ("aio.serve_loop",),
    ("aio.servers",),
    ("aio",),
    # The metrics endpoint: a sockserve server itself, reporting another's stats().
    ("exporter.collector", "exporter.history"),
    ("exporter",),
    ("",),  # the package's __init__
    ("testing", "testing.*", "pytest_plugin", "demo"),
    ("cli", "cli.*", "__main__"),
]

#: Dispatch strategies run callables; they never touch a socket.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "dispatch": (
        "listeners",
        "serving.selector_loop",
        "servers",
        "servers.base",
        "handlers",
        "mixins",
    ),
}

SOURCE_ROOT = Path(sockserve.__file__).resolve().parent


def module_name_of(path: Path) -> str:
    """``src/sockserve/dispatch/threads.py`` → ``dispatch.threads``; the package → ``""``."""
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules() -> set[str]:
    return {module_name_of(path) for path in SOURCE_ROOT.rglob("*.py")}


def layer_of(module: str) -> int | None:
    for rank, members in enumerate(LAYERS):
        for member in members:
            if member == module or (member.endswith(".*") and module.startswith(member[:-1])):
                return rank
    return None


def imported_modules(
    source: str, module: str, is_package: bool, modules: set[str]
) -> list[tuple[int, str, str]]:
    """Every sockserve module ``source`` imports: ``(line, target, statement as written)``.

    Imports anywhere count (inside functions and ``if TYPE_CHECKING:`` too): each one is
    a dependency a reader has to follow. ``from . import X`` names the submodule ``X``
    when there is one, else the package's ``__init__``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sockserve" or alias.name.startswith("sockserve."):
                    target = alias.name.removeprefix("sockserve").lstrip(".")
                    found.append((node.lineno, target, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            elif node.module and (
                node.module == "sockserve" or node.module.startswith("sockserve.")
            ):
                base = node.module.removeprefix("sockserve").lstrip(".")
            else:
                continue
            written = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                alias.name for alias in node.names
            )
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                target = submodule if submodule in modules else base
                found.append((node.lineno, target, written))
    return found


def layering_violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Messages for every import that goes against the flow, given ``{module: (source,
    is_package)}``."""
    modules = set(sources)
    problems: list[str] = []
    for module, (source, is_package) in sorted(sources.items()):
        shown = f"sockserve.{module}" if module else "sockserve (__init__)"
        rank = layer_of(module)
        if rank is None:
            problems.append(f"{shown} has no place in LAYERS; add it to its stage")
            continue
        for line, target, written in imported_modules(source, module, is_package, modules):
            target_shown = f"sockserve.{target}" if target else "sockserve (__init__)"
            target_rank = layer_of(target)
            if target_rank is None:
                problems.append(f"{shown}:{line} `{written}`: {target_shown} has no layer")
            elif target_rank > rank:
                problems.append(
                    f"{shown}:{line} `{written}`: imports {target_shown}, a later stage "
                    f"({', '.join(LAYERS[target_rank])} comes after "
                    f"{', '.join(LAYERS[rank])})"
                )
            for prefix, forbidden in FORBIDDEN.items():
                if (module == prefix or module.startswith(prefix + ".")) and (target in forbidden):
                    problems.append(
                        f"{shown}:{line} `{written}`: {prefix} must not import "
                        f"{target_shown} (strategies never touch a socket)"
                    )
    return problems


def read_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name_of(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(SOURCE_ROOT.rglob("*.py"))
    }


def test_imports_follow_the_data_flow() -> None:
    sources = read_sources()
    assert {"errors", "listeners", "serving.core", "servers", "mixins", "cli"} <= set(sources)
    problems = layering_violations(sources)
    assert not problems, "imports against the data flow:\n  " + "\n  ".join(problems)


def test_leaves_import_nothing_from_sockserve() -> None:
    sources = read_sources()
    modules = set(sources)
    for leaf in ("errors", "metrics"):
        source, is_package = sources[leaf]
        imports = imported_modules(source, leaf, is_package, modules)
        assert imports == [], f"sockserve.{leaf} is a leaf but imports {imports}"


def test_layering_check_catches_a_backward_import() -> None:
    """The checker itself: a strategy importing the facade, a handler importing the loop."""
    sources = {
        "errors": ("", False),
        "handlers": ("from .serving.selector_loop import ServeLoop\n", False),
        "serving.selector_loop": ("from .. import handlers\n", True),
        "dispatch": ("from .threads import ThreadPerRequest\n", True),
        "dispatch.threads": ("def f():\n    from ..servers import TCPServer\n", False),
        "servers": ("from sockserve.errors import SockserveError\n", False),
        "newthing": ("", False),
    }
    problems = layering_violations(sources)
    assert any(
        p.startswith("sockserve.handlers:1 `from .serving.selector_loop import ServeLoop`")
        for p in problems
    ), problems
    assert any(
        p.startswith("sockserve.dispatch.threads:2 `from ..servers import TCPServer`")
        and "later stage" in p
        for p in problems
    ), problems
    assert any("dispatch must not import sockserve.servers" in p for p in problems), problems
    assert any(p.startswith("sockserve.newthing has no place") for p in problems), problems
    assert not any(p.startswith("sockserve.serving") for p in problems), problems
    assert not any(p.startswith("sockserve.servers") for p in problems), problems
    assert not any(p.startswith("sockserve.dispatch:") for p in problems), problems
    assert len(problems) == 4, problems


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(module for module in known_modules() if layer_of(module) is None)
    assert unplaced == [], f"modules with no place in LAYERS: {unplaced}"
