"""shutdown() from a signal handler must not deadlock, wherever the signal lands.

Python runs signal handlers on the main thread between bytecodes, so the handler can
interrupt the serve loop while it holds its internal lock. This test forces exactly that
moment, in a subprocess so that a regression hangs (and is killed) there, not in pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import os, signal, sockserve

    class Handler(sockserve.BaseRequestHandler):
        pass

    server = sockserve.TCPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *args: server.shutdown())
    real_lock = server._serve_loop._lock

    class SignalWhileHeld:
        fired = False

        def __enter__(self):
            real_lock.acquire()
            if not SignalWhileHeld.fired:
                SignalWhileHeld.fired = True
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs with the lock held

        def __exit__(self, *exc):
            real_lock.release()

    server._serve_loop._lock = SignalWhileHeld()
    server.serve_forever()
    server.server_close()
    print("serve_forever returned")
    """
)


def test_shutdown_in_a_signal_handler_while_the_loop_holds_its_lock() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "serve_forever returned"
