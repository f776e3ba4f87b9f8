"""The command's access lists and per-client limits: ``--allow``, ``--deny``,
``--max-connections-per-client``, ``--client-rate`` and ``--client-burst``.

Served for real (a ``sockserve demo echo`` process, clients bound to distinct loopback
addresses), and every mistake is one ``sockserve: error:`` line with exit status 2,
however the value was given (command line, environment, config file).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from test_cli import (
    STOP_TIMEOUT,
    assert_one_line_error,
    command_env,
    host_port,
    run_to_completion,
    running,
    stop_cleanly,
)

ALICE = "127.0.0.2"
BOB = "127.0.0.3"


def connect_from(source: str, address: tuple[str, int]) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(STOP_TIMEOUT)
    try:
        client.bind((source, 0))
        client.connect(address)
    except BaseException:
        client.close()
        raise
    return client


def echoes(client: socket.socket, payload: bytes) -> bool:
    """True if the server echoed ``payload``; False if it closed the connection instead."""
    try:
        client.sendall(payload)
        return client.recv(len(payload)) == payload
    except ConnectionResetError:
        return False  # closed with our bytes unread


def test_allow_and_deny_judge_clients(tmp_path: Path) -> None:
    args = ["demo", "echo", "--port", "0", "--allow", "127.0.0.0/29", "--deny", BOB]
    with running(args, tmp_path) as command:
        [printed] = command.read_bound_addresses()
        address = host_port(printed)
        with connect_from(ALICE, address) as alice:
            assert echoes(alice, b"hello")
        for source in (BOB, "127.0.0.9"):
            with connect_from(source, address) as refused:
                assert not echoes(refused, b"hello")
        stop_cleanly(command)


@pytest.mark.parametrize("mode", ["threading", "async"])
def test_per_client_connections_and_rate(tmp_path: Path, mode: str) -> None:
    args = ["demo", "echo", "--port", "0", "--mode", mode]
    args += ["--max-connections-per-client", "1", "--client-rate", "0.01", "--client-burst", "2"]
    with running(args, tmp_path) as command:
        [printed] = command.read_bound_addresses()
        address = host_port(printed)
        with connect_from(ALICE, address) as first:
            assert echoes(first, b"one")  # admitted and held open
            with connect_from(ALICE, address) as second:  # a token, but a second connection
                assert not echoes(second, b"two")
        with connect_from(ALICE, address) as third:  # the burst of two is spent
            assert not echoes(third, b"three")
        with connect_from(BOB, address) as bob:
            assert echoes(bob, b"bob")
        stop_cleanly(command)


def test_print_config_shows_the_limits(tmp_path: Path) -> None:
    env = command_env(SOCKSERVE_DENY="10.6.6.0/24 2001:db8::/32")
    result = run_to_completion(
        ["demo", "echo", "--allow", "10.0.0.0/8", "--client-rate", "5", "--print-config"],
        tmp_path,
        env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'allow = ["10.0.0.0/8"]  # command line' in lines
    assert 'deny = ["10.6.6.0/24", "2001:db8::/32"]  # environment' in lines
    assert "client-rate = 5.0  # command line" in lines
    assert "# max-connections-per-client: not set (no limit)" in lines


BAD_LIMITS = {
    "host-bits": (["--allow", "10.1.2.3/8"], ["--allow", "10.1.2.3/8", "10.0.0.0/8"]),
    "not-a-network": (["--deny", "localhost"], ["--deny", "localhost"]),
    "zone": (["--deny", "fe80::1%eth0"], ["--deny", "fe80::1%eth0", "zone"]),
    "per-client-zero": (["--max-connections-per-client", "0"], ["--max-connections-per-client"]),
    "rate-zero": (["--client-rate", "0"], ["--client-rate", "> 0"]),
    "rate-words": (["--client-rate", "fast"], ["--client-rate", "fast"]),
    "burst-without-rate": (["--client-burst", "5"], ["--client-burst", "--client-rate"]),
    "per-client-on-udp": (
        ["--bind", "udp://127.0.0.1:0", "--max-connections-per-client", "2"],
        ["--max-connections-per-client", "udp://"],
    ),
}


@pytest.mark.parametrize(("args", "named"), BAD_LIMITS.values(), ids=BAD_LIMITS.keys())
def test_limits_that_cannot_work(tmp_path: Path, args: list[str], named: list[str]) -> None:
    port = [] if "--bind" in args else ["--port", "0"]
    result = run_to_completion(["demo", "echo", *port, *args], tmp_path)
    assert_one_line_error(result, *named)


def test_a_bad_network_from_the_environment_or_a_file(tmp_path: Path) -> None:
    env = command_env(SOCKSERVE_ALLOW="10.0.0.0/8 10.0.0.300")
    result = run_to_completion(["demo", "echo", "--port", "0"], tmp_path, env)
    assert_one_line_error(result, "SOCKSERVE_ALLOW", "10.0.0.300")
    config = tmp_path / "sockserve.toml"
    config.write_text('deny = ["192.168.0.0/33"]\n')
    result = run_to_completion(["demo", "echo", "--port", "0", "--config", str(config)], tmp_path)
    assert_one_line_error(result, "deny", "192.168.0.0/33")
