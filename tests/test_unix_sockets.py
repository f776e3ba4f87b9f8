"""Unix socket files as services use them: stale files, file modes, abstract names.

A server restarted after a crash finds its old socket file at the path. Nobody is bound to
it, so it is removed (one INFO line) and the bind goes ahead; a socket some process is
bound to, or a file that is not a socket, is left untouched and refused with
``UnixSocketPathExistsError``. ``unix_socket_mode`` gives the file its permission bits
before any client can reach it. A Linux abstract name (``"\\0name"``) has no file at all.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
import sockserve.servers.stream
import sockserve.sockets
from sockserve.addresses import format_address, unix_address
from sockserve.errors import AddressInUseError, ConfigurationError, UnixSocketPathExistsError
from sockserve.testing import serve_in_thread
from unix_paths import short_directory

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux behaviour (abstract names, fchmod)"
)

#: Seconds any client socket in these tests waits before failing the test.
CLIENT_TIMEOUT = 10.0
SERVER_CLASS_NAMES = ["UnixStreamServer", "UnixDatagramServer"]
SOCKET_TYPES = {"stream": socket.SOCK_STREAM, "datagram": socket.SOCK_DGRAM}


class EchoLine(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class EchoDatagram(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


HANDLERS: dict[str, type[sockserve.BaseRequestHandler]] = {
    "UnixStreamServer": EchoLine,
    "UnixDatagramServer": EchoDatagram,
}


@pytest.fixture
def unix_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for Unix socket files, short enough for the AF_UNIX path limit."""
    with short_directory(tmp_path) as directory:
        yield directory


def make_server(server_class_name: str, address: Any, **kwargs: Any) -> Any:
    server_class = getattr(sockserve, server_class_name)
    return server_class(address, HANDLERS[server_class_name], **kwargs)


def exchange(server: Any, unix_dir: Path, payload: bytes = b"ping\n") -> bytes:
    """Send ``payload`` to the server and return its echo."""
    address = server.server_address
    if server.socket_type == socket.SOCK_STREAM:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(CLIENT_TIMEOUT)
            client.connect(address)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            return client.recv(1024)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.bind(str(unix_dir / f"c-{uuid.uuid4().hex[:8]}.sock"))  # so replies reach us
        try:
            client.sendto(payload, address)
            return client.recv(1024)
        finally:
            os.unlink(client.getsockname())


def make_stale_socket(path: Path, sock_type: int) -> None:
    """Leave a socket file with nobody behind it, as a crashed server does."""
    with socket.socket(socket.AF_UNIX, sock_type) as sock:
        sock.bind(str(path))


def identity(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino, st.st_mode


def sockets_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "sockserve.sockets"]


# -- a stale socket file is replaced --------------------------------------------------------


@pytest.mark.parametrize("left_by", sorted(SOCKET_TYPES))
@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
def test_stale_socket_file_is_removed_and_the_server_binds(
    unix_dir: Path, caplog: pytest.LogCaptureFixture, server_class_name: str, left_by: str
) -> None:
    path = unix_dir / "stale.sock"
    make_stale_socket(path, SOCKET_TYPES[left_by])
    caplog.set_level(logging.INFO, logger="sockserve.sockets")

    with serve_in_thread(make_server(server_class_name, str(path))) as server:
        assert exchange(server, unix_dir) == b"ping\n"
    assert not path.exists()  # and server_close() removed it

    records = sockets_records(caplog)
    assert [record.levelno for record in records] == [logging.INFO]
    assert str(path) in records[0].getMessage()
    assert "stale" in records[0].getMessage()


def test_restart_after_a_crash_needs_no_cleanup(unix_dir: Path) -> None:
    """A server that dies without ``server_close()`` leaves its file; the next one starts."""
    path = unix_dir / "restart.sock"
    crashed = sockserve.UnixStreamServer(str(path), EchoLine)
    crashed.socket.close()  # the process "died": the socket is gone, the file is not
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with serve_in_thread(sockserve.UnixStreamServer(str(path), EchoLine)) as server:
        assert exchange(server, unix_dir) == b"ping\n"
    crashed.server_close()  # the file it made is gone already; nothing else is removed
    assert not path.exists()


# -- anything else at the path is refused and left alone ------------------------------------


@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
@pytest.mark.parametrize("live_type", sorted(SOCKET_TYPES))
def test_live_socket_is_refused_and_untouched(
    unix_dir: Path, caplog: pytest.LogCaptureFixture, server_class_name: str, live_type: str
) -> None:
    path = unix_dir / "live.sock"
    caplog.set_level(logging.INFO, logger="sockserve.sockets")
    with socket.socket(socket.AF_UNIX, SOCKET_TYPES[live_type]) as live:
        live.settimeout(CLIENT_TIMEOUT)
        live.bind(str(path))
        if live_type == "stream":
            live.listen()
        before = identity(path)
        with pytest.raises(UnixSocketPathExistsError) as excinfo:
            make_server(server_class_name, str(path))
        assert excinfo.value.errno == errno.EADDRINUSE
        assert str(path) in str(excinfo.value)
        assert "a server is using" in str(excinfo.value)
        assert identity(path) == before
        if live_type == "stream":
            # The probe is a datagram connect(): the live server saw no stray connection.
            live.setblocking(False)
            with pytest.raises(BlockingIOError):
                live.accept()
    assert sockets_records(caplog) == []


def test_stream_server_between_bind_and_listen_is_not_stale(unix_dir: Path) -> None:
    """Refused to a stream connect(), yet bound: the datagram probe tells the difference."""
    path = unix_dir / "early.sock"
    first = sockserve.UnixStreamServer(str(path), EchoLine, bind_and_activate=False)
    try:
        first.server_bind()
        with pytest.raises(UnixSocketPathExistsError):
            sockserve.UnixStreamServer(str(path), EchoLine)
        first.server_activate()
        with serve_in_thread(first):
            assert exchange(first, unix_dir) == b"ping\n"
    finally:
        first.server_close()
    assert not path.exists()


@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
def test_regular_file_is_refused_and_untouched(unix_dir: Path, server_class_name: str) -> None:
    path = unix_dir / "data.sock"
    path.write_bytes(b"someone's data")
    before = identity(path)
    with pytest.raises(UnixSocketPathExistsError) as excinfo:
        make_server(server_class_name, str(path))
    assert "not a socket" in str(excinfo.value)
    assert str(path) in str(excinfo.value)
    assert identity(path) == before
    assert path.read_bytes() == b"someone's data"


def test_socket_that_cannot_be_probed_is_left_alone(
    unix_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Say EACCES (no write permission: root never sees it, hence the stand-in probe)."""
    path = unix_dir / "private.sock"
    make_stale_socket(path, socket.SOCK_STREAM)
    before = identity(path)
    monkeypatch.setattr(sockserve.sockets, "_probe_unix_socket_file", lambda _: errno.EACCES)
    with pytest.raises(UnixSocketPathExistsError) as excinfo:
        sockserve.UnixStreamServer(str(path), EchoLine)
    assert os.strerror(errno.EACCES) in str(excinfo.value)
    assert identity(path) == before


def test_file_replaced_while_probed_is_not_removed(
    unix_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process took the path between our probe and our unlink: its file stays."""
    path = unix_dir / "race.sock"
    make_stale_socket(path, socket.SOCK_STREAM)
    probe = sockserve.sockets._probe_unix_socket_file

    def probe_while_another_server_replaces_it(probed: str | bytes) -> int | None:
        result = probe(probed)
        path.unlink()
        make_stale_socket(path, socket.SOCK_STREAM)  # a new inode at the same path
        return result

    monkeypatch.setattr(
        sockserve.sockets, "_probe_unix_socket_file", probe_while_another_server_replaces_it
    )
    with pytest.raises(UnixSocketPathExistsError) as excinfo:
        sockserve.UnixStreamServer(str(path), EchoLine)
    assert "another process" in str(excinfo.value)
    assert stat.S_ISSOCK(path.lstat().st_mode)


# -- unix_socket_mode ---------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A known umask, restored after: the process-wide value is read by the bind."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666, 0o777], ids=oct)
def test_mode_is_set_before_the_first_client(unix_dir: Path, mode: int) -> None:
    """Exact bits, wider than the umask allows too, set before listen() lets anyone in."""
    path = unix_dir / "mode.sock"

    class ModeServer(sockserve.UnixStreamServer):
        unix_socket_mode = mode

    server = ModeServer(str(path), EchoLine, bind_and_activate=False)
    try:
        server.server_bind()
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as early:
            early.settimeout(CLIENT_TIMEOUT)
            with pytest.raises(ConnectionRefusedError):
                early.connect(str(path))  # not listening: no client before the mode
        server.server_activate()
        with serve_in_thread(server):
            assert exchange(server, unix_dir) == b"ping\n"
    finally:
        server.server_close()


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("mode", [0o600, 0o620], ids=oct)
def test_datagram_mode_is_set_at_construction(unix_dir: Path, mode: int) -> None:
    path = unix_dir / "dmode.sock"

    class ModeServer(sockserve.UnixDatagramServer):
        unix_socket_mode = mode

    with serve_in_thread(ModeServer(str(path), EchoDatagram)) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert exchange(server, unix_dir) == b"ping\n"


@needs_linux
@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
def test_file_is_never_wider_than_the_mode(
    unix_dir: Path, monkeypatch: pytest.MonkeyPatch, server_class_name: str
) -> None:
    """Between bind() and chmod() the file already has no more than the mode's bits.

    This is what keeps a datagram server's file closed in that instant: it takes
    datagrams from the moment it is bound.
    """
    path = unix_dir / "narrow.sock"
    seen_at_chmod: list[int] = []
    apply = sockserve.servers.stream.apply_unix_socket_mode

    def look_then_apply(created: Any, mode: int | None) -> None:
        seen_at_chmod.append(stat.S_IMODE(os.stat(path).st_mode))
        apply(created, mode)

    monkeypatch.setattr(sockserve.servers.stream, "apply_unix_socket_mode", look_then_apply)
    server_class = getattr(sockserve, server_class_name)
    mode_class = type("ModeServer", (server_class,), {"unix_socket_mode": 0o600})
    server = mode_class(str(path), HANDLERS[server_class_name])
    try:
        assert seen_at_chmod == [0o600]  # the umask's default here would be 0o755
    finally:
        server.server_close()


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, "0o600", 1.5, True], ids=repr)
@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
def test_invalid_mode_is_a_configuration_error(
    unix_dir: Path, server_class_name: str, mode: object
) -> None:
    path = unix_dir / "bad.sock"
    server_class = getattr(sockserve, server_class_name)
    mode_class = type("ModeServer", (server_class,), {"unix_socket_mode": mode})
    with pytest.raises(ConfigurationError) as excinfo:
        mode_class(str(path), HANDLERS[server_class_name])
    assert "unix_socket_mode" in str(excinfo.value)
    assert repr(mode) in str(excinfo.value)
    assert not path.exists()  # checked before the bind


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
def test_mode_on_an_ip_server_is_a_configuration_error(server_class: Any) -> None:
    mode_class = type("ModeServer", (server_class,), {"unix_socket_mode": 0o600})
    with pytest.raises(ConfigurationError) as excinfo:
        mode_class(("127.0.0.1", 0), sockserve.BaseRequestHandler)
    assert "Unix socket server" in str(excinfo.value)


@needs_linux
def test_mode_on_an_abstract_name_is_a_configuration_error() -> None:
    class ModeServer(sockserve.UnixStreamServer):
        unix_socket_mode = 0o600

    with pytest.raises(ConfigurationError) as excinfo:
        ModeServer(unix_address(f"@sockserve-test-{uuid.uuid4().hex}"), EchoLine)
    assert "abstract" in str(excinfo.value)


# -- abstract names ------------------------------------------------------------------------


@pytest.fixture
def abstract_name() -> str:
    """A fresh name in Linux's abstract namespace, in the ``@name`` spelling."""
    return f"@sockserve-test-{os.getpid()}-{uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("text", "address"),
    [("@name", "\0name"), ("@", "\0"), ("/run/x.sock", "/run/x.sock"), ("rel", "rel"), ("", "")],
)
def test_unix_address_turns_at_names_into_abstract_ones(text: str, address: str) -> None:
    assert unix_address(text) == address
    if text:
        assert format_address(address) == text  # and back, as log lines show it


@needs_linux
@pytest.mark.parametrize("server_class_name", SERVER_CLASS_NAMES)
def test_abstract_server_serves_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract_name: str, server_class_name: str
) -> None:
    monkeypatch.chdir(tmp_path)  # a name taken for a relative path would appear here
    address = unix_address(abstract_name)
    with short_directory(tmp_path / "clients") as client_dir:
        client_dir.mkdir(exist_ok=True)
        with serve_in_thread(make_server(server_class_name, address)) as server:
            assert format_address(server.server_address) == abstract_name
            assert exchange(server, client_dir) == b"ping\n"
    assert [entry.name for entry in tmp_path.iterdir()] == ["clients"]


@needs_linux
def test_two_servers_on_one_abstract_name(abstract_name: str, unix_dir: Path) -> None:
    address = unix_address(abstract_name)
    with serve_in_thread(sockserve.UnixStreamServer(address, EchoLine)) as first:
        with pytest.raises(AddressInUseError) as excinfo:
            sockserve.UnixStreamServer(address, EchoLine)
        assert type(excinfo.value) is AddressInUseError  # no file, so not "path exists"
        assert excinfo.value.errno == errno.EADDRINUSE
        assert excinfo.value.strerror == f"address already in use: {abstract_name}"
        assert exchange(first, unix_dir) == b"ping\n"  # the first one is unharmed
