"""Stopping a TCP listener without resetting a connection the kernel already completed.

The problem
    A drain accepts what the kernel queued, then closes the listening socket. Closing a
    listener resets every connection still in its accept queue (Linux,
    ``inet_csk_listen_stop``), and the handshake of a connection that arrived between the
    last ``accept()`` and the ``close()`` had completed: the client (a load balancer)
    saw its connect succeed, may have sent its request, and gets a reset it cannot
    retry. Between those two calls the draining thread can lose the GIL for a switch
    interval (5 ms), so under load this is not rare: 30 resets in 100 drains of a
    threading server with 4 clients connecting in a loop, 0 with the filter below
    (tests/test_listener_stop.py reproduces it).

How it works
    On Linux, before that last sweep, a classic BPF socket filter that drops TCP
    segments with SYN set is attached to the listener (``SO_ATTACH_FILTER``; for TCP the
    filter sees the segment from its TCP header, so byte 13 holds the flags). No new
    handshake can start; segments of handshakes already under way and of queued
    connections still pass, so the sweep until ``EAGAIN`` then leaves nothing that a
    close could reset. A client whose SYN was dropped retransmits it (after 1 s) and
    then finds the port closed: refused, which a balancer retries elsewhere, or its
    connect timeout fires first, which it retries too.

Trade-offs
    A handshake in flight when the filter is attached (its SYN-ACK sent, its ACK not yet
    back: microseconds on loopback, one round trip across a network) can still complete
    after the sweep; that window is the network's, no longer the scheduler's. Other
    systems and a filter the kernel refuses fall back to a plain close:
    ``refuse_new_handshakes`` returns False and changes nothing. A Unix socket has no
    handshake: its file is removed before the sweep instead (``refuse_new_connections``).
    Children accepted after the filter inherit it (``sk_clone_lock`` copies it); it only
    drops SYNs, which an established connection never receives from a well-behaved peer.
"""

from __future__ import annotations

import array
import socket
import struct
import sys
from typing import Any

#: ``SO_ATTACH_FILTER`` from <asm-generic/socket.h> (Linux; Python names it only
#: on some builds).
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: Offset of the flags byte in the TCP header (RFC 9293, section 3.1) and the SYN bit.
TCP_FLAGS_OFFSET = 13
TCP_FLAG_SYN = 0x02
#: Classic BPF opcodes (<linux/bpf_common.h>): load a byte at an absolute offset,
#: jump if bits are set, return a constant (0: drop; 0xFFFFFFFF: keep the whole packet).
BPF_LD_B_ABS = 0x30
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
DROP_SYN_PROGRAM = (
    (BPF_LD_B_ABS, 0, 0, TCP_FLAGS_OFFSET),
    (BPF_JSET_K, 0, 1, TCP_FLAG_SYN),  # SYN set: fall through to drop; else skip it
    (BPF_RET_K, 0, 0, 0),
    (BPF_RET_K, 0, 0, 0xFFFFFFFF),
)


def refuse_new_handshakes(listener: socket.socket) -> bool:
    """Make a TCP listener ignore new SYNs, keeping its queue; False if not possible here.

    Call it before the last sweep of the accept queue and the close (see above), and
    only on a listener this process alone holds: the filter belongs to the socket, so on
    one shared with pre-fork siblings or held by systemd for the next instance it would
    stop their accepting too (``servers.TCPServer.owns_listener`` tells).
    """
    if not sys.platform.startswith("linux"):
        return False
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if listener.type != socket.SOCK_STREAM or listener.fileno() < 0:
        return False
    instructions = b"".join(struct.pack("HBBI", *step) for step in DROP_SYN_PROGRAM)
    program = array.array("B", instructions)  # stays alive until setsockopt has copied it
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native layout.
    fprog = struct.pack("HP", len(DROP_SYN_PROGRAM), program.buffer_info()[0])
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False  # a kernel without socket filters, or a seccomp policy: plain close
    return True


def refuse_new_connections(server: Any) -> None:
    """Before a drain's last sweep: let no new connection join the listener's queue.

    TCP: the SYN filter above. A Unix socket has no handshake to filter; its file is
    removed instead, as ``server_close()`` would a moment later: a ``connect()`` by path
    then fails at once (ENOENT, which a client retries elsewhere) while the connections
    already queued stay queued for the sweep. An abstract name has no file: there
    ``backlog_bound`` ends the sweep. Only on a listener this process bound (another
    process may share an inherited one, and the file would be theirs too).
    """
    owns_listener = getattr(server, "owns_listener", None)  # a stream server's method
    if owns_listener is None or not owns_listener():
        return
    listener = server.socket
    if listener.family == getattr(socket, "AF_UNIX", None):
        remove_file = getattr(server, "_remove_unix_path", None)
        if remove_file is not None:
            remove_file()
    else:
        refuse_new_handshakes(listener)


def backlog_bound(server: object) -> int:
    """How many queued connections a drain's last sweep takes at most.

    The kernel's accept queue holds ``request_queue_size`` connections (the ``listen()``
    backlog; Linux allows one more), so that many were there when the drain began. On a
    listener nothing stops new connections joining (an abstract Unix name, a listener
    another process bound), clients that keep connecting keep the queue full, and a sweep
    "until EAGAIN" would serve them until the drain's deadline. Past this bound what
    arrives was sent after the drain began, and is refused by the close.
    """
    queue_size = getattr(server, "request_queue_size", 5)
    return max(1, int(queue_size)) + 1
