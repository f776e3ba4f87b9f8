"""One async handler's per-message cost in process, without a client: for instruction counts.

An ``AsyncStreamRequestHandler`` echoes 64-byte lines (``readline``/``write``/``drain``,
or ``read(65536)`` with ``--read``) through a real uvloop transport on one end of a
socket pair; ``data_received`` is fed by hand, as uvloop would call it, and the far end
is drained every 100 messages. Timing here is noisy; run it under valgrind and difference
two message counts, which is exact to a few dozen instructions::

    for n in 5000 25000; do
      N=$n valgrind --tool=callgrind --callgrind-out-file=cg.$n "$(python3 -c \\
        'import sys; print(sys.executable)')" bench/inprocess_echo.py
    done   # then (Ir of cg.25000 - Ir of cg.5000) / 20000 = instructions per message

``SOCKSERVE_PURE_PYTHON=1`` measures the pure-Python path. Prints CPU µs per message.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import sys
import time

import uvloop

from sockserve.aio import AsyncStreamRequestHandler
from sockserve.aio.fastpath import IMPLEMENTATION
from sockserve.aio.streams import receive_buffer

MESSAGE = b"x" * 63 + b"\n"
BATCH = 100  # messages between two drains of the far end (its buffer must not fill)


class LineEcho(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        reader, writer = self.reader, self.writer
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()


class ChunkEcho(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        reader, writer = self.reader, self.writer
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def per_message_seconds(handler_class: type[AsyncStreamRequestHandler], count: int) -> float:
    loop = asyncio.get_running_loop()
    ours, far = socket.socketpair()
    far.setblocking(False)
    reader = IMPLEMENTATION.reader_class(loop, receive_buffer())
    transport, _ = await loop.connect_accepted_socket(lambda: reader, ours)
    transport.pause_reading()  # data_received is fed by hand below
    handler = handler_class((reader, IMPLEMENTATION.writer_class(transport, reader)), None, None)
    context = contextvars.copy_context()

    async def connection() -> None:
        await handler.setup()
        await IMPLEMENTATION.driver_class(
            handler.handle(), reader, context
        )  # as connections.py does

    task = loop.create_task(connection(), context=context)
    for _ in range(3):
        await asyncio.sleep(0)  # the handler starts and parks in its first read
    echoed = 0

    def feed() -> None:
        # A plain loop callback, no task running: as a transport calls data_received.
        nonlocal echoed
        for _ in range(count // BATCH):
            for _ in range(BATCH):
                reader.data_received(MESSAGE)
            while True:
                try:
                    echoed += len(far.recv(1 << 20))
                except BlockingIOError:
                    break
        fed.set_result(None)

    fed = loop.create_future()
    started = time.process_time()
    loop.call_soon(feed)
    await fed
    elapsed = time.process_time() - started
    task.cancel()
    transport.abort()
    far.close()
    if echoed != count // BATCH * BATCH * len(MESSAGE):
        raise SystemExit(f"echoed {echoed} bytes, expected {count * len(MESSAGE)}")
    return elapsed / count


def main() -> None:
    count = int(os.environ.get("N", "200000"))
    handler_class = ChunkEcho if "--read" in sys.argv[1:] else LineEcho
    seconds = uvloop.run(per_message_seconds(handler_class, count))
    print(f"{handler_class.__name__}: {seconds * 1e6:.3f} µs CPU per message ({count} messages)")


if __name__ == "__main__":
    main()
