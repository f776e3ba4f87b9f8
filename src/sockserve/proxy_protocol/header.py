"""What a PROXY header says: the result types, the wire constants and the limits.

Both parsers (``v1``, ``v2``) and the encoder build on this module; it holds no logic
beyond small properties. Section numbers refer to HAProxy's ``proxy-protocol.txt``
(revision 2020/03/05).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal, TypeAlias

#: ``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6 (the shapes ``accept()``
#: returns, so a handler's ``client_address`` looks the same with or without a proxy),
#: a ``str`` path for Unix sockets (a leading NUL names Linux's abstract namespace).
Address: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str

Command: TypeAlias = Literal["PROXY", "LOCAL"]

# -- limits, each with its source -------------------------------------------------------

#: Section 2.1: the longest v1 line, CRLF included, is
#: ``"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"``; a receiver that has
#: not seen CRLF within this many bytes must declare the line invalid.
V1_MAX_LINE_BYTES = 107
#: Section 2.1: the shortest complete v1 header is ``"PROXY UNKNOWN\r\n"``.
V1_MIN_LINE_BYTES = 15
#: Section 2.2: the fixed part of a v2 header (signature, ver/cmd, fam, length).
V2_FIXED_BYTES = 16
#: Our default cap on a whole v2 header. The length field allows 16 + 65535 bytes, but
#: section 2 says both formats are designed to fit in 536 bytes (the smallest segment
#: every host must accept); 4 kB leaves room for generous TLVs (long CNs, unique IDs,
#: custom types) while bounding what one unauthenticated connection makes us buffer.
V2_DEFAULT_MAX_BYTES = 4096
#: Section 2.2.5: a unique ID is "up to 128 bytes".
V2_MAX_UNIQUE_ID_BYTES = 128

# -- signatures (section 2.1 and 2.2) ---------------------------------------------------

#: "PROXY" and exactly one space: every v1 line starts so.
V1_SIGNATURE = b"PROXY "
#: The v2 signature: a NUL at the 5th byte and "QUIT" make HTTP, TLS, SMTP and FTP
#: servers refuse it at once (section 6), and it cannot be mistaken for v1.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# -- v2 TLV types (section 2.2) ---------------------------------------------------------

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

#: Section 2.2.6: bits of the SSL TLV's ``client`` field.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


@dataclass(frozen=True, slots=True)
class SslInfo:
    """The PP2_TYPE_SSL TLV (section 2.2.6): what the proxy's TLS layer saw.

    ``client_flags`` holds the ``PP2_CLIENT_*`` bits; ``verify_result`` is 0 when the
    client presented a certificate that verified, non-zero otherwise. The strings come
    from sub-TLVs and are ``None`` when the proxy did not send them; ``sub_tlvs`` keeps
    every sub-TLV raw, in order, unknown subtypes included.
    """

    client_flags: int
    verify_result: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    sub_tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def is_tls(self) -> bool:
        """The client connected over SSL/TLS (``PP2_CLIENT_SSL``)."""
        return bool(self.client_flags & PP2_CLIENT_SSL)

    @property
    def has_verified_cert(self) -> bool:
        """The client presented a certificate (on this connection or session) that
        verified."""
        presented = self.client_flags & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)
        return bool(presented) and self.verify_result == 0


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY header: who the peer really is, as the proxy saw it.

    ``command`` is ``"PROXY"`` (use ``source``/``destination``) or ``"LOCAL"`` (the proxy
    opened the connection itself, e.g. a health check: use the real socket endpoints). A
    v1 ``UNKNOWN`` line reports ``"LOCAL"`` too, because section 2.1 asks the receiver to
    treat it exactly so ("use the real connection's parameters"); ``version`` tells the
    two apart.

    ``family`` is ``socket.AF_INET``/``AF_INET6``/``AF_UNIX``/``AF_UNSPEC`` and
    ``protocol`` is ``socket.SOCK_STREAM``/``SOCK_DGRAM`` or 0, as the header declared
    them. ``source`` and ``destination`` are ``None`` for LOCAL and whenever the family or
    protocol is unspecified (section 2.2: "the receiver should ignore address
    information").

    ``tlvs`` holds every v2 TLV raw, in wire order (NOOP and unknown types included); the
    known ones are also decoded into ``alpn``, ``authority``, ``unique_id``, ``netns`` and
    ``ssl``. ``crc32c_checked`` is true when a CRC32c TLV was present and matched (a
    mismatch raises). ``consumed`` is the header's length: the application data starts
    at ``data[consumed:]``.
    """

    version: Literal[1, 2]
    command: Command
    family: socket.AddressFamily
    protocol: int
    source: Address | None
    destination: Address | None
    consumed: int
    tlvs: tuple[tuple[int, bytes], ...] = ()
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    netns: str | None = None
    ssl: SslInfo | None = None
    crc32c_checked: bool = False

    @property
    def is_local(self) -> bool:
        """True when the real socket endpoints apply (v2 LOCAL, v1 UNKNOWN)."""
        return self.command == "LOCAL"
