"""``sockserve serve --bind unix:/PATH`` as a service restarts: the socket file's life.

A crash leaves the socket file behind (nobody unlinks it); a restart must replace it
without help, saying so once. A file a live server is bound to must never be taken
over: that is a second instance started by mistake, refused with one line and exit 2.
The mode (``--unix-mode``) is the file's from the bind on, never the umask's first.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from test_cli import (
    STOP_TIMEOUT,
    assert_one_line_error,
    run_to_completion,
    running,
    stop_cleanly,
    unix_echo,
)
from unix_paths import short_directory

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


def leave_stale_socket_file(path: Path) -> None:
    """What a crashed server leaves: a socket file nobody is bound to any more."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))
        crashed.listen()
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_a_stale_socket_file_is_replaced_with_one_log_line(tmp_path: Path) -> None:
    with short_directory(tmp_path) as directory:
        path = directory / "service.sock"
        leave_stale_socket_file(path)
        args = ["demo", "echo", "--bind", f"unix:{path}", "--unix-mode", "0660"]
        with running([*args, "--log-level", "info"], tmp_path) as command:
            assert command.read_bound_addresses() == [f"unix:{path}"]
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            assert unix_echo(str(path), b"after a crash") == b"after a crash"
            stop_cleanly(command)
            stderr = command.stderr()
        assert not path.exists()
    lines = [line for line in stderr.splitlines() if "stale" in line]
    assert len(lines) == 1, stderr
    assert str(path) in lines[0]


def test_a_live_socket_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    with short_directory(tmp_path) as directory:
        path = directory / "taken.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
            live.bind(str(path))
            live.listen()
            live.settimeout(STOP_TIMEOUT)
            result = run_to_completion(["demo", "echo", "--bind", f"unix:{path}"], tmp_path)
            assert_one_line_error(result, str(path))
            # Still the live server's: a client reaches it, not a new file.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(STOP_TIMEOUT)
                client.connect(str(path))
                accepted, _ = live.accept()
                accepted.close()


def test_a_second_instance_on_the_same_path_is_refused(tmp_path: Path) -> None:
    """The mistake the refusal exists for: the same command started twice."""
    with short_directory(tmp_path) as directory:
        path = directory / "twice.sock"
        args = ["demo", "echo", "--bind", f"unix:{path}"]
        with running(args, tmp_path) as first:
            first.read_bound_addresses()
            result = run_to_completion(args, tmp_path)
            assert_one_line_error(result, str(path))
            assert unix_echo(str(path), b"still the first") == b"still the first"
            stop_cleanly(first)
