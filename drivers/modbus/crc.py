"""CRC-16/MODBUS, the check of every RTU frame: one implementation for the line, the simulator and the tests.

Reflected polynomial 0xA001, initial value 0xFFFF, no final XOR. On the wire the CRC follows the frame low
byte first: `01 03 00 04 00 01` is sent as `01 03 00 04 00 01 C5 CB` (CRC 0xCBC5).
"""

from __future__ import annotations


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of `data` as a number (0..0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


def crc_bytes(data: bytes) -> bytes:
    """The two CRC bytes that follow `data` on the wire (low byte first)."""
    return crc16(data).to_bytes(2, "little")


def with_crc(data: bytes) -> bytes:
    """`data` with its CRC appended: a complete RTU frame."""
    return data + crc_bytes(data)


def crc_ok(frame: bytes) -> bool:
    """True when `frame` (CRC included) is at least 4 bytes and its last two bytes are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")
