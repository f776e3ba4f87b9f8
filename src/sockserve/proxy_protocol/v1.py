"""The v1 text format (section 2.1): one US-ASCII line ending in CRLF.

``PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n``: the signature, the protocol, the
source and destination address, the source and destination port, each separated by
exactly one space. ``PROXY UNKNOWN`` may be followed by anything up to the CRLF.

How strict, and why: the spec says "any sequence which does not exactly match the
protocol must be discarded", and a lenient parser is how header smuggling happens (a
bare LF accepted as a line end leaves the real CRLF, and whatever precedes it, to the
application). So: uppercase keywords only, one space between fields, no leading zeros
in ports or IPv4 octets (the spec forbids them to avoid octal confusion), addresses of
the declared family, CRLF within 107 bytes, and no lone CR or LF anywhere before it.

While the CRLF has not arrived, the partial line is still checked, so a peer that sends
garbage is refused after a few bytes instead of after a timeout or 107 bytes.
"""

from __future__ import annotations

import socket

from ..errors import ProxyHeaderError
from .header import V1_MAX_LINE_BYTES, V1_SIGNATURE, Address, ProxyHeader

#: The bytes that can follow ``PROXY `` in a line we could still accept.
_KEYWORDS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
#: The bytes addresses and ports may use in a TCP4/TCP6 line (hex for IPv6, dots for
#: IPv4 and IPv4-mapped IPv6, colons, digits) and the separating space.
_TCP_LINE_BYTES = b"0123456789abcdefABCDEF.: "
_FAMILIES = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}


def _bad_field(message: str, line: bytes) -> ProxyHeaderError:
    return ProxyHeaderError("v1_bad_field", f"PROXY v1: {message}", excerpt=line)


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse a v1 line at the start of ``data`` (which starts with ``PROXY ``).

    ``None``: no CRLF yet, and what is there could still become a valid line.
    """
    window = bytes(data[:V1_MAX_LINE_BYTES])
    end = window.find(b"\r\n")
    if end < 0:
        _check_partial(window)
        if len(window) >= V1_MAX_LINE_BYTES:
            raise ProxyHeaderError(
                "v1_too_long",
                f"PROXY v1: no CRLF within {V1_MAX_LINE_BYTES} bytes (section 2.1)",
                excerpt=window,
            )
        return None
    line = window[:end]
    _check_line_ends(line)
    if line.startswith(b"PROXY UNKNOWN"):
        if len(line) > 13 and line[13] != 0x20:
            raise _bad_field("UNKNOWN must be followed by a space or CRLF", line)
        # Section 2.1: "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(
            version=1,
            command="LOCAL",
            family=socket.AF_UNSPEC,
            protocol=0,
            source=None,
            destination=None,
            consumed=end + 2,
        )
    fields = line.split(b" ")
    if len(fields) != 6 or not all(fields):
        raise _bad_field("expected 6 fields separated by single spaces", line)
    _, keyword, src_host, dst_host, src_port, dst_port = fields
    family = _FAMILIES.get(keyword)
    if family is None:
        raise _bad_field("protocol must be TCP4, TCP6 or UNKNOWN", line)
    if line[len(b"PROXY TCP4 ") :].translate(None, _TCP_LINE_BYTES):
        raise _bad_field("unexpected characters in the line", line)
    source = _address(family, src_host, src_port, line)
    destination = _address(family, dst_host, dst_port, line)
    return ProxyHeader(
        version=1,
        command="PROXY",
        family=family,
        protocol=socket.SOCK_STREAM,
        source=source,
        destination=destination,
        consumed=end + 2,
    )


def _check_partial(window: bytes) -> None:
    """Refuse a CRLF-less prefix that no further bytes can make valid."""
    if window.endswith(b"\r"):
        window = window[:-1]  # the LF may be next
    _check_line_ends(window)
    rest = window[len(V1_SIGNATURE) :]
    keyword = next((k for k in _KEYWORDS if k.startswith(rest[: len(k)])), None)
    if keyword is None:
        raise _bad_field("protocol must be TCP4, TCP6 or UNKNOWN", window)
    if keyword == b"UNKNOWN":
        if len(rest) > 7 and rest[7] != 0x20:
            raise _bad_field("UNKNOWN must be followed by a space or CRLF", window)
        return  # section 2.1: anything may follow until the CRLF
    fields = rest[len(keyword) :]
    if (
        fields.translate(None, _TCP_LINE_BYTES)
        or fields.startswith(b" ")
        or b"  " in fields
        or fields.count(b" ") > 3
    ):
        raise _bad_field("unexpected characters in the line", window)


def _check_line_ends(line: bytes) -> None:
    # Section 2.1: "The receiver must not tolerate a single CR or LF character to end
    # the line". Before the first CRLF there may be neither, or two parsers could
    # disagree on where the header ends.
    if b"\r" in line or b"\n" in line:
        raise _bad_field("a lone CR or LF before the CRLF", line)


def _address(family: int, host: bytes, port: bytes, line: bytes) -> Address:
    text = host.decode("ascii")  # the caller checked the line's characters
    try:
        packed = socket.inet_pton(family, text)
    except OSError:
        kind = "IPv4" if family == socket.AF_INET else "IPv6"
        raise _bad_field(f"not an {kind} address: {text[:45]!r}", line) from None
    canonical = socket.inet_ntop(family, packed)
    if family == socket.AF_INET:
        # Only the canonical dotted quad: no leading zeros (octal confusion, section 2.1).
        if canonical != text:
            raise _bad_field(f"not a canonical IPv4 address: {text!r}", line)
        return (canonical, _port(port, line))
    # Section 2.1 allows any case and '::' compression for IPv6; report the canonical
    # text so that v1 and v2 give the same string for the same address.
    return (canonical, _port(port, line), 0, 0)


def _port(field: bytes, line: bytes) -> int:
    # bytes.isdigit() is ASCII-only, so no sign, space, underscore or non-ASCII digit.
    if not field.isdigit() or len(field) > 5 or (len(field) > 1 and field[0] == 0x30):
        raise _bad_field(f"bad port {field[:8]!r} (decimal, no leading zeros)", line)
    value = int(field)
    if value > 65535:
        raise _bad_field(f"port {value} out of range 0-65535", line)
    return value
