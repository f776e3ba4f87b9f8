"""CRC32c (Castagnoli), the checksum of the PP2_TYPE_CRC32C TLV (section 2.2.3).

Why our own: the core is stdlib-only and the stdlib has CRC-32 (``zlib``, ``binascii``)
but not the Castagnoli polynomial. The spec points at RFC 4960 appendix B, which uses
the reflected form of polynomial 0x1EDC6F41, i.e. 0x82F63B78, initial value and final
XOR 0xFFFFFFFF. A 256-entry table (one lookup per byte) runs at roughly 0.1 µs per byte
in CPython, so a typical 100-300 byte header costs 10-30 µs, and only when the TLV is
present.
"""

from __future__ import annotations

#: The reflected Castagnoli polynomial.
CASTAGNOLI_REFLECTED = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CASTAGNOLI_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The CRC32c of ``data``; pass a previous result as ``crc`` to continue it.

    ``crc32c(b"123456789") == 0xE3069283``, the published check value.
    """
    table = _TABLE  # a local: the loop below is the whole cost
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
