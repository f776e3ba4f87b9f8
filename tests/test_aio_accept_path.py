"""The async mode's per-connection path, accept to close (issue 15, per-connection cost).

What the cuts must not change: ``verify_request`` still gets the accepted socket;
accepted sockets read as ``socket.accept()``'s do; a connection the client closed first
is closed without the server waiting for it, yet a flush still sends every reply before
the FIN and the slot comes back; an overload episode's end is still logged.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from typing import Any

import pytest

from sockserve import TCPServer
from sockserve.aio import AsyncStreamRequestHandler, AsyncTCPServer
from sockserve.testing import serve_in_thread
from test_aio import LOOPS, _run, _Signal

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0


class _Echo(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        while data := await self.reader.read(65536):
            self.writer.write(data)
            await self.writer.drain()


@pytest.mark.parametrize("event_loop", LOOPS)
def test_verify_request_still_sees_the_accepted_socket(event_loop: str) -> None:
    seen: list[Any] = []

    class Verifying(AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append(request)
            return True

    with (
        Verifying(("127.0.0.1", 0), _Echo, event_loop=event_loop) as server,
        serve_in_thread(server),
        socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client,
    ):
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
    assert len(seen) == 1
    assert isinstance(seen[0], socket.socket)


def test_accepted_sockets_read_as_socket_accept_ones() -> None:
    with (
        AsyncTCPServer(("127.0.0.1", 0), _Echo) as async_server,
        TCPServer(("127.0.0.1", 0), _Echo) as sync_server,
    ):
        for server in (async_server, sync_server):
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT):
                request, _ = server.get_request()
            with request, socket.create_connection(server.server_address, CLIENT_TIMEOUT):
                reference, _ = server.socket.accept()
                with reference:
                    assert isinstance(request, socket.socket)
                    assert repr(request.family) == repr(reference.family)
                    assert repr(request.type) == repr(reference.type)
                    assert request.proto == reference.proto
                    assert repr(request).split(" fd=")[0] == repr(reference).split(" fd=")[0]
                    # The async server's sockets go to its event loop; the synchronous
                    # server's stay exactly socket.socket (multiprocessing pickles those).
                    assert (type(request) is socket.socket) is (server is sync_server)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_client_closing_first_gets_every_reply_and_the_slot_back(event_loop: str) -> None:
    # More than the socket buffers hold: the handler ends with replies still buffered,
    # which the close must flush before its FIN.
    payload = b"x" * (4 * 1024 * 1024)

    def send_all_then_end(client: socket.socket) -> None:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)

    with (
        AsyncTCPServer(("127.0.0.1", 0), _Echo, event_loop=event_loop) as server,
        serve_in_thread(server),
    ):
        for _ in range(20):
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client:
                client.sendall(b"hello")
                assert client.recv(16) == b"hello"
        with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client:
            sender = threading.Thread(target=send_all_then_end, args=(client,))
            sender.start()
            received = bytearray()
            while chunk := client.recv(1 << 20):  # until the server's FIN
                received += chunk
            sender.join(CLIENT_TIMEOUT)
        assert bytes(received) == payload
    stats = server.stats()
    assert (stats.accepted, stats.finished, stats.active) == (21, 21, 0)


def test_the_end_of_an_overload_episode_is_still_logged() -> None:
    release = threading.Event()

    class Holding(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.read(1)
            await asyncio.get_running_loop().run_in_executor(None, release.wait, CLIENT_TIMEOUT)

    started, ended = (
        _Signal("reached; refusing new clients"),
        _Signal("below max_connections again"),
    )
    logger = logging.getLogger("sockserve.limits")
    level = logger.level
    logger.setLevel(logging.INFO)  # the episode's end is an INFO line
    logger.addHandler(started)
    logger.addHandler(ended)
    try:
        with (
            AsyncTCPServer(
                ("127.0.0.1", 0), Holding, max_connections=1, overload_policy="reject"
            ) as server,
            serve_in_thread(server),
            socket.create_connection(server.server_address, CLIENT_TIMEOUT) as held,
        ):
            held.sendall(b"x")
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as refused:
                assert refused.recv(16) == b""  # accepted, refused, closed
            assert started.seen.wait(CLIENT_TIMEOUT)
            release.set()
            # logged as the held request finishes: its slot frees the episode's end
            assert ended.seen.wait(CLIENT_TIMEOUT)
    finally:
        release.set()
        logger.removeHandler(started)
        logger.removeHandler(ended)
        logger.setLevel(level)


def test_an_empty_accept_queue_after_emfile_ends_the_episode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An accept batch can end in EMFILE although no client waits (Linux allocates the
    # descriptor before it looks at the queue); the next look finding the queue empty
    # (EAGAIN) proves descriptors are free, so the episode's end is logged without
    # waiting for another client.
    from sockserve import listeners

    now = [1000.0]
    monkeypatch.setattr(listeners.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(listeners, "_ACCEPT_ALLOCATES_FIRST", True)
    caplog.set_level(logging.INFO, logger=listeners.log.name)
    backoff = listeners.AcceptBackoff()
    backoff.record_failure(OSError(errno.EMFILE, "Too many open files"), ("127.0.0.1", 1))
    now[0] += listeners.ACCEPT_EPISODE_END_SECONDS + 1
    backoff.flush()
    assert "works again" not in caplog.text  # nothing has worked yet
    backoff.record_empty_queue()
    assert backoff.seconds_left() == 0
    backoff.flush()
    assert "works again after 1 failed attempts" in caplog.text
    assert not backoff.is_backing_off


# -- the opening, done in the accept callback (aio/opening.py) ---------------------------------


@pytest.mark.parametrize("event_loop", LOOPS)
def test_verify_request_refuses_before_any_task_and_each_ending_is_counted(
    event_loop: str,
) -> None:
    verdicts = iter([False, True])
    answered = threading.Event()

    class Verifying(AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            answer = next(verdicts, True)
            answered.set()
            return answer

    with (
        Verifying(("127.0.0.1", 0), _Echo, event_loop=event_loop) as server,
        serve_in_thread(server),
    ):
        with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as refused:
            assert refused.recv(16) == b""  # closed unserved
        with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client:
            client.sendall(b"served")
            assert client.recv(16) == b"served"
    stats = server.stats()
    assert (stats.accepted, stats.finished, stats.active) == (2, 2, 0)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_a_stop_before_a_begun_connection_starts_closes_it(event_loop: str) -> None:
    # verify_request asks the server to stop: the connection's transport is made, but its
    # task is cancelled before its first step; the transport and socket must close (a
    # socket left to the garbage collector fails the test with a ResourceWarning).
    class Stopping(AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            self.shutdown()  # on the loop's thread: only asks
            return True

    with (
        Stopping(("127.0.0.1", 0), _Echo, event_loop=event_loop) as server,
        serve_in_thread(server),
        socket.create_connection(server.server_address, CLIENT_TIMEOUT) as client,
    ):
        try:
            assert client.recv(16) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset is a close too
    assert server.stats().active == 0


@pytest.mark.parametrize("event_loop", LOOPS)
def test_awaiting_an_opening_before_connection_made_waits_for_it(event_loop: str) -> None:
    # The uncommon order (a task that runs before the loop's connection_made, as with an
    # eager task factory): the task waits for it, then takes the transport.
    from sockserve.aio.opening import Opening

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            protocol = asyncio.Protocol()
            connecting = loop.connect_accepted_socket(lambda: protocol, ours)
            waiting = connecting.send(None)
            transport = await Opening(True, None, connecting, waiting)
            assert transport.get_protocol() is protocol
            theirs.setblocking(False)
            transport.write(b"made")
            assert await _receive(loop, theirs) == b"made"
            transport.close()
            assert await _receive(loop, theirs) == b""

    _run(main(), event_loop)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_an_opening_cancelled_while_waiting_closes_its_transport(event_loop: str) -> None:
    from sockserve.aio.opening import Opening

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            opening = Opening(True)

            async def take_over() -> None:
                await opening

            # The task first: its step runs before the loop's connection_made, so it waits.
            task = loop.create_task(take_over())
            opening.connecting = loop.connect_accepted_socket(asyncio.Protocol, ours)
            opening.waiting = opening.connecting.send(None)
            await asyncio.sleep(0)  # the task has started to wait ...
            assert not task.done()
            task.cancel()  # ... and is cancelled there
            with pytest.raises(asyncio.CancelledError):
                await task
            theirs.setblocking(False)
            assert await _receive(loop, theirs) == b""  # the loop's cleanup closed it

    _run(main(), event_loop)


def test_a_loop_that_opens_without_waiting_hands_the_transport_over() -> None:
    # A loop whose connect_accepted_socket never waits (neither asyncio's nor uvloop's
    # does that today): the opening keeps the transport it returned.
    from sockserve.admission.limits import untracked_ticket
    from sockserve.aio.opening import begin_stream
    from sockserve.serving.job import RequestJob

    made = object()
    real_loop = asyncio.new_event_loop()

    class OpensAtOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_loop, name)  # what the reader needs (create_future)

        def connect_accepted_socket(self, factory: Any, sock: socket.socket) -> Any:
            async def connect() -> tuple[Any, Any]:
                return made, factory()

            return connect()

    ours, theirs = socket.socketpair()
    try:
        with ours, theirs, AsyncTCPServer(("127.0.0.1", 0), _Echo) as server:
            ticket = untracked_ticket(ours, "peer")
            job = RequestJob(server, ours, "peer", ticket, server._core)
            opening = begin_stream(job, memoryview(bytearray(64)), OpensAtOnce())  # type: ignore[arg-type]
            assert opening is not None
            assert opening.reader is not None
            assert opening.made() is made
    finally:
        real_loop.close()


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    return await asyncio.wait_for(loop.sock_recv(sock, 16), CLIENT_TIMEOUT)
