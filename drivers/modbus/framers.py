"""pymodbus framers that accept only the answer to the request in flight, and say why they drop the rest.

pymodbus hands a client the first frame that decodes: an FC03 answer to an FC04 request, 12 registers for
10, or (RTU, no transaction id) a late copy of the previous answer are all taken as the answer. These framers
replace pymodbus's own on a connection (drivers/modbus/line.py) and keep its receive path otherwise:
- every complete frame is checked against the read in flight (drivers/modbus/answer.py); one that does not
  answer it is dropped and recorded by kind, and the request keeps waiting for the right one until its
  timeout;
- RTU: every complete frame in the received bytes is looked at, not only the first: when two frames answer
  the request, the later one wins (a device or serial server that answers twice leaves the stale copy in
  front of the real answer);
- a frame that arrives while no request is waiting is stale: it is reported to `on_stray` and dropped.

Everything here runs on the event loop, inside pymodbus's data_received.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.modbus.answer import FRAMING, STALE, WRONG_UNIT, Expected, rtu_response_length
from drivers.modbus.crc import crc_ok

RX_KEPT = 64  # bytes of the receive buffer kept for log details

# (unit id, kind, detail) of a frame that arrived while no request was waiting
OnStray = Callable[[int, str, str], None]


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one request's connection received besides (or instead of) its answer."""

    dropped: tuple[tuple[str, str], ...]  # (kind, why) of each frame that did not answer the request
    bad_crc: bytes  # the last frame whose CRC failed, or b""
    rx: bytes  # the tail of the receive buffer (b"" when nothing at all arrived)


def _hex(frame: bytes) -> str:
    return frame[:32].hex(" ") + (" ..." if len(frame) > 32 else "")


class FrameWatch:
    """The connection's side of its framer: the read in flight, its answer, and what was dropped."""

    def __init__(self, on_stray: OnStray) -> None:
        self.on_stray = on_stray
        self.expected: Expected | None = None
        self.answer: ModbusPDU | None = None
        self.last_rx = 0.0  # monotonic time bytes last arrived (the RTU line's silence counts from it)
        self._answer_frame = b""
        self._last_frame = b""  # the previous request's answer: a copy of it is named stale
        self._dropped: list[tuple[str, str]] = []
        self._bad_crc = b""
        self._rx = b""

    def begin(self, expected: Expected) -> None:
        self.expected = expected
        self.answer = None
        self._answer_frame = b""
        self._dropped = []
        self._bad_crc = b""
        self._rx = b""

    def end(self) -> Exchange:
        """The request is over: from now on every frame is stale."""
        seen = Exchange(tuple(self._dropped), self._bad_crc, self._rx)
        if self.answer is not None:
            self._last_frame = self._answer_frame
        self.expected = None
        self.answer = None
        return seen

    def heard(self, buffer: bytes) -> None:
        self.last_rx = time.monotonic()
        if self.expected is not None:
            self._rx = bytes(buffer[-RX_KEPT:])

    def bad_crc(self, frame: bytes) -> None:
        if self.expected is not None:
            self._bad_crc = frame

    def drop(self, kind: str, why: str, unit: int, frame: bytes) -> None:
        if self.expected is None:
            self.on_stray(unit, kind, f"{why}: {_hex(frame)}")
        else:
            self._dropped.append((kind, f"{why}: {_hex(frame)}"))

    def offer(
        self, decoder: DecodePDU, unit: int, pdu: bytes, frame: bytes, tid: int = 0
    ) -> ModbusPDU | None:
        """The decoded answer when `frame` answers the request in flight; otherwise None (recorded)."""
        if self.expected is None:
            self.drop(STALE, "answer while no request was waiting", unit, frame)
            return None
        problem = self.expected.mismatch(unit, pdu)
        decoded = decoder.decode(pdu) if problem is None else None
        if problem is None and decoded is None:
            problem = (FRAMING, "undecodable answer")
        if problem is not None:
            kind, why = problem
            if frame == self._last_frame and kind != WRONG_UNIT:
                kind, why = STALE, f"a copy of the previous answer ({why})"
            self.drop(kind, f"{why} (waiting for {self.expected.describe()})", unit, frame)
            return None
        assert decoded is not None
        if self.answer is not None:
            # Two answers to one request: RTU has no transaction id, so the earlier was a late copy of an
            # older answer that happened to have the same shape.
            self._dropped.append((STALE, f"two answers to one request, the earlier one dropped: "
                                         f"{_hex(self._answer_frame)}"))  # fmt: skip
        decoded.dev_id = unit
        decoded.transaction_id = tid
        self.answer = decoded
        self._answer_frame = frame
        return decoded


def _complete_frame_at(data: bytes, at: int) -> int:
    """Size of a CRC-valid RTU response frame starting at data[at], else 0."""
    size = rtu_response_length(data, at)
    if not size or at + size > len(data):
        return 0
    return size if crc_ok(data[at : at + size]) else 0


class CheckedRtuFramer(FramerRTU):
    """RTU framing (serial lines and RTU over TCP) that hands pymodbus only the answer to the request."""

    def __init__(self, watch: FrameWatch) -> None:
        super().__init__(DecodePDU(False))
        self.watch = watch

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:
        watch = self.watch
        watch.heard(data)
        used = 0
        found: ModbusPDU | None = None
        while used < len(data):
            size = rtu_response_length(data, used)
            if size is None:
                used += 1  # line noise: hunt for the next frame start
                continue
            if size == 0 or used + size > len(data):
                # Incomplete, or noise that claims a long frame: a complete frame further on wins.
                later = next((k for k in range(used + 1, len(data)) if _complete_frame_at(data, k)), None)
                if later is None:
                    break  # wait for more bytes
                used = later
                continue
            frame = bytes(data[used : used + size])
            if not crc_ok(frame):
                watch.bad_crc(frame)
                used += 1
                continue
            used += size
            pdu = watch.offer(self.decoder, frame[0], frame[1:-2], frame)
            if pdu is not None:
                found = pdu
        return used, found


class CheckedSocketFramer(FramerSocket):
    """Modbus TCP (MBAP) framing that hands pymodbus only the answer to the request (transaction id too)."""

    def __init__(self, watch: FrameWatch) -> None:
        super().__init__(DecodePDU(False))
        self.watch = watch

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:
        watch = self.watch
        watch.heard(data)
        used = 0
        found: ModbusPDU | None = None
        while used < len(data):
            size, unit, tid, pdu = self.decode(data[used:])
            if not size:
                break  # wait for more bytes
            frame = bytes(data[used : used + size])
            used += size
            if watch.expected is not None and exp_tid and tid != exp_tid:
                watch.drop(STALE, f"transaction id {tid}, expected {exp_tid}", unit, frame)
                continue
            answer = watch.offer(self.decoder, unit, pdu, frame, tid)
            if answer is not None:
                found = answer
        return used, found
