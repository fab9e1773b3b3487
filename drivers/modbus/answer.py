"""What a valid answer to one read looks like, and why a received frame is not one.

RTU has no transaction id: an answer is recognised only by its unit id, its function code and its byte
count. A late copy of an earlier answer (a device or a serial server that answers twice) that passes these
checks is indistinguishable from the real answer by content; the line (drivers/modbus/line.py) covers that
case by timing, and these checks catch every copy that answers a read of another shape (the SDM120's voltage
block read as its frequency block: 32 registers offered for 10).

Kinds (the error counters' keys, stable):
- "wrong_unit": the frame comes from another unit id;
- "wrong_function": the function code is neither the request's nor its exception (FC03 answer to FC04);
- "framing": the byte count is not 2 x count (registers) or ceil(count / 8) (bits), or does not match the
  frame's length: short answers and extra registers alike;
- "stale": a copy of the previous answer, or a frame that arrived while no request was waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.modbus.planner import ReadRequest

WRONG_UNIT = "wrong_unit"
WRONG_FUNCTION = "wrong_function"
FRAMING = "framing"
STALE = "stale"
KINDS = (STALE, WRONG_UNIT, WRONG_FUNCTION, FRAMING)

EXCEPTION_BIT = 0x80


@dataclass(frozen=True, slots=True)
class Expected:
    """The shape of the answer to one read request."""

    unit: int
    function: int  # 1..4
    count: int
    bits: bool

    @property
    def byte_count(self) -> int:
        return math.ceil(self.count / 8) if self.bits else 2 * self.count

    def describe(self) -> str:
        what = "bits" if self.bits else "registers"
        return f"FC{self.function:02d} x {self.count} {what} from unit {self.unit}"

    def mismatch(self, unit: int, pdu: bytes) -> tuple[str, str] | None:
        """None when `pdu` (function code onwards, no CRC) from `unit` answers this read; else (kind, why)."""
        # Unit 0 is a broadcast: nothing answers it, so there is no unit to compare (pymodbus's rule too).
        if self.unit and unit != self.unit:
            return WRONG_UNIT, f"answer from unit {unit} to a request to unit {self.unit}"
        if not pdu:
            return FRAMING, "empty answer"
        function = pdu[0]
        if function == self.function | EXCEPTION_BIT:
            return None if len(pdu) == 2 else (FRAMING, f"exception answer of {len(pdu)} bytes")
        if function != self.function:
            return WRONG_FUNCTION, f"FC{function:02d} answer to an FC{self.function:02d} request"
        if len(pdu) < 2:
            return FRAMING, "answer without a byte count"
        declared, carried = pdu[1], len(pdu) - 2
        if declared != carried:
            return FRAMING, f"byte count {declared} but {carried} data bytes"
        if declared != self.byte_count:
            unit_size = "bits" if self.bits else "registers"
            return FRAMING, (
                f"{declared} data bytes for {self.count} {unit_size} (expected {self.byte_count})"
            )
        return None


def expected(request: ReadRequest) -> Expected:
    return Expected(request.unit, request.code, request.count, request.is_bits)


def rtu_response_length(buf: bytes | bytearray, at: int = 0) -> int | None:
    """Length of the RTU response frame that would start at `buf[at]`, CRC included.

    0: more bytes are needed to tell; None: no response frame starts with these bytes (line noise).
    """
    if len(buf) - at < 2:
        return 0
    function = buf[at + 1]
    if function & EXCEPTION_BIT:
        return 5 if 0 < function & ~EXCEPTION_BIT < 0x80 else None
    if function in (1, 2, 3, 4, 12, 17, 20, 21, 23):  # a byte count follows the function code
        return 0 if len(buf) - at < 3 else 5 + buf[at + 2]
    if function in (5, 6, 8, 11, 15, 16):  # echoes and write confirmations: fixed 8 bytes
        return 8
    if function == 7:
        return 5
    return None
