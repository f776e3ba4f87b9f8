"""A battery server in a process of its own: ``python serve_process.py '<json settings>'``.

Cases run a server here when the process itself is what they test: its descriptor limit
(``nofile``), its CPU time and RSS, signals sent to it, SIGKILL, its children. Settings:
``class`` (a sockserve server class name), ``address`` (``[host, port]`` or a Unix path),
``kwargs`` (constructor keywords), ``fail_every``, ``nofile_spare`` (the soft
RLIMIT_NOFILE becomes the descriptors open once the server is bound plus this many: a
limit on accepting, not on starting),
``noise_signal`` (installs a no-op Python handler for it, so that every delivery
interrupts a system call), ``stop`` (``"shutdown"`` or ``"drain:<seconds>"``) and
``handler_timeout`` (the stream handler's ``timeout``).

Protocol on stdout: ``READY <json address> <pid>`` once serving, then after SIGTERM
``STOPPED <json stats> <json drain report or null>``. Logs go to stderr, at INFO, one
line each: ``<pid> <LEVEL> <logger>: <message>``. A pre-fork master handles SIGTERM
itself (graceful stop); for the others SIGTERM is recorded and the main thread stops
the server.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
from typing import Any

from protocol import Behaviour, handler_for

import sockserve


def build(settings: dict[str, Any]) -> Any:
    server_class = getattr(sockserve, settings["class"])
    name = settings["class"]

    class Configured(Behaviour):
        fail_every = settings.get("fail_every", 0)

    handler = handler_for(
        is_stream="UDP" not in name and "Datagram" not in name,
        is_async=name.startswith("Async"),
        behaviour=Configured,
    )
    if settings.get("handler_timeout"):
        handler.timeout = settings["handler_timeout"]
    address = settings["address"]
    address = tuple(address) if isinstance(address, list) else address
    return server_class(address, handler, **settings.get("kwargs", {}))


def compact(value: Any) -> str:
    """JSON without spaces: the protocol's lines are split on spaces."""
    return json.dumps(value, separators=(",", ":"))


def main() -> int:
    settings = json.loads(sys.argv[1])
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(process)d %(levelname)s %(name)s: %(message)s",
    )
    noise = settings.get("noise_signal")
    if noise:
        signal.signal(getattr(signal, noise), lambda signum, frame: None)
    server = build(settings)
    if settings.get("nofile_spare"):
        # Counted now, once the server is bound: the limit leaves that many descriptors
        # for connections (and whatever serving opens itself).
        soft = len(os.listdir("/proc/self/fd")) + settings["nofile_spare"]
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    address = server.server_address
    is_prefork = hasattr(server, "worker_pids")
    stopped = threading.Event()
    if not is_prefork:
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    print(f"READY {compact(address)} {os.getpid()}", flush=True)
    report = None
    if is_prefork:
        server.serve_forever(poll_interval=0.1)  # returns after SIGTERM's graceful stop
    else:
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        serving.start()
        while not stopped.wait(1.0):
            pass
        stop = settings.get("stop", "shutdown")
        if stop.startswith("drain:"):
            drained = server.drain(float(stop.split(":", 1)[1]))
            report = {"finished": drained.finished, "aborted": drained.aborted}
        else:
            server.shutdown()
        serving.join()
    stats = server.stats().to_dict()
    server.server_close()
    print(f"STOPPED {compact(stats)} {compact(report)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
