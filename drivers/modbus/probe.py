"""`meterwatch probe`: read raw registers once and print every way they can be read.

For a meter without a trustworthy datasheet: each register as int16/uint16, then every 32-bit and 64-bit
window in all four byte/word orders (ABCD, CDAB, BADC, DCBA) with the profile settings that select it, so the
right `type`, `byte_order` and `word_order` can be copied into a profile; and one row of the registers read as
text, high byte first and low byte first (a `string` point's byte_order big or little).
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.codec import Order, float32_value, words_to_int
from drivers.modbus.line import Connection
from drivers.modbus.planner import ReadRequest
from drivers.modbus.poller import ReadOutcome
from drivers.modbus.spec import LineSpec, Transport
from drivers.modbus.tcp import TcpConnection
from gateway.config.profile import Function
from gateway.core.stats import LineStats

ORDERS: tuple[tuple[str, Order, Order], ...] = (
    ("ABCD", "big", "big"),
    ("CDAB", "big", "little"),
    ("BADC", "little", "big"),
    ("DCBA", "little", "little"),
)
EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(frozen=True, slots=True)
class Interpretation:
    offset: int  # first register of the window, relative to the read's address
    width: int  # registers
    order: str  # ABCD, CDAB, BADC, DCBA ("" for single registers)
    byte_order: Order
    word_order: Order
    signed: int
    unsigned: int
    real: float | None  # float32/float64 (None for 16-bit)


def _signed(n: int, bits: int) -> int:
    return n - (1 << bits) if n >= 1 << (bits - 1) else n


def all_interpretations(regs: Sequence[int]) -> list[Interpretation]:
    """Every 16-bit register, then every 32-bit and 64-bit window in the four orders."""
    out = [Interpretation(i, 1, "", "big", "big", _signed(w, 16), w, None) for i, w in enumerate(regs)]
    for width in (2, 4):
        bits = 16 * width
        for i in range(len(regs) - width + 1):
            window = regs[i : i + width]
            for name, byte_order, word_order in ORDERS:
                n = words_to_int(window, byte_order, word_order)
                if width == 2:
                    real = float32_value(n)
                else:
                    (real,) = struct.unpack(">d", n.to_bytes(8, "big"))
                out.append(Interpretation(i, width, name, byte_order, word_order, _signed(n, bits), n, real))
    return out


def _real(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.9g}"


def ascii_reading(regs: Sequence[int], byte_order: Order = "big") -> str:
    """The registers as text, two characters each; a byte that is not printable ASCII shows as '.'."""
    out: list[str] = []
    for w in regs:
        pair = (w & 0xFF, w >> 8) if byte_order == "little" else (w >> 8, w & 0xFF)
        out.extend(chr(b) if 0x20 <= b < 0x7F else "." for b in pair)
    return "".join(out)


def format_interpretations(address: int, regs: Sequence[int]) -> list[str]:
    lines = [
        f"ascii (type: string, byte_order: big): |{ascii_reading(regs)}|"
        f"  (byte_order: little): |{ascii_reading(regs, 'little')}|",
        "registers:",
    ]
    items = all_interpretations(regs)
    for it in (x for x in items if x.width == 1):
        a = address + it.offset
        lines.append(
            f"  {a:5d} (0x{a:04X})  0x{it.unsigned:04X}  int16 {it.signed:>6d}  uint16 {it.unsigned:>5d}"
        )
    for width, kind in ((2, "32-bit"), (4, "64-bit")):
        windows = [x for x in items if x.width == width]
        if not windows:
            continue
        real = "float32" if width == 2 else "float64"
        lines.append(f"{kind} values (type int{16 * width}/uint{16 * width}/{real}):")
        for it in windows:
            a = address + it.offset
            lines.append(
                f"  {a:5d} (0x{a:04X}) {it.order} "
                f"(byte_order: {it.byte_order:6s} word_order: {it.word_order:6s})"
                f"  {real} {_real(it.real):>16s}  int{16 * width} {it.signed:>21d}"
                f"  uint{16 * width} {it.unsigned:>20d}"
            )
    return lines


async def read_once(line: LineSpec, unit: int, function: Function, address: int, count: int) -> ReadOutcome:
    """One read over a fresh connection of `line`, through the client the line's devices are polled with;
    the connection is closed afterwards."""
    stats = LineStats(line=line.id, transport=line.transport)
    conn: Connection | TcpConnection
    if line.builtin_client:
        conn = TcpConnection(line, stats, f"probe:{line.id}", lambda c, up: None)
    else:
        conn = Connection(line, stats, f"probe:{line.id}", lambda c, up: None)
    try:
        return await conn.read(ReadRequest(unit, function, address, count, ()))
    finally:
        conn.close()


FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

HINTS = {
    2: "the device has no such register here: check --address, --count and --function",
    1: "the device does not support this function: try the other --function",
}
FAILURE_HINTS = {
    "connection": "check --host/--port (or --serial) and that the device or gateway is reachable",
    "timeout": "no answer: check --unit, the wiring and the serial settings (baud rate, parity)",
    "crc": "answer with a bad CRC: check the baud rate, parity and stop bits",
    "framing": "unusable answer: check --rtu-over-tcp (RTU framing) versus plain Modbus TCP",
    "wrong_function": "the device answered another function code: try the other --function",
    "wrong_unit": "another unit id answered: check --unit, and that no two devices on the bus share it",
    "stale": "an answer to an earlier request: the device or its serial server answers twice",
}


def describe_outcome(outcome: ReadOutcome) -> str | None:
    """Why there is nothing to show (with what to check), or None when there are words."""
    if outcome.exception_code is not None:
        code = outcome.exception_code
        text = f"device answered with Modbus exception {code:02d} ({EXCEPTIONS.get(code, 'unknown')})"
        return f"{text}; {HINTS[code]}" if code in HINTS else text
    if outcome.failure is not None:
        text = f"{outcome.failure}: {outcome.detail}" if outcome.detail else outcome.failure
        hint = FAILURE_HINTS.get(outcome.failure)
        return f"{text}; {hint}" if hint else text
    return None


async def run_probe(
    host: str | None,
    port: int,
    serial: str | None,
    rtu_over_tcp: bool,
    baudrate: int,
    parity: str,
    stopbits: int,
    unit: int,
    address: str,
    count: int,
    function: str,
    timeout: float,
) -> int:
    """The `meterwatch probe` command: print the interpretations; returns the exit code."""

    def fail(msg: str) -> int:
        print(f"probe: {msg}", file=sys.stderr)
        return 2

    if (host is None) == (serial is None):
        return fail("give either --host (Modbus TCP, or --rtu-over-tcp) or --serial (RTU)")
    if function not in FUNCTION_CODES:
        return fail(f"--function must be holding, input, coil or discrete, got {function!r}")
    bits = function in ("coil", "discrete")
    most = 2000 if bits else 125
    if not 1 <= count <= most:
        return fail(f"--count must be 1..{most} for --function {function}, got {count}")
    if parity not in ("N", "E", "O"):
        return fail(f"--parity must be N, E or O, got {parity!r}")
    try:
        start = int(address, 0)
    except ValueError:
        return fail(f"--address must be a number (decimal or 0x hex), got {address!r}")
    if not 0 <= start <= 0xFFFF or start + count > 0x10000:
        return fail(f"--address {start} with --count {count} is outside 0..65535")
    if not 0 <= unit <= 247:
        return fail(f"--unit must be 0..247, got {unit}")
    if serial is not None:
        line = LineSpec(
            id="probe", transport="rtu", device=serial, baudrate=baudrate, parity=parity,  # type: ignore[arg-type]
            stopbits=stopbits, timeout=timeout,
        )  # fmt: skip
    else:
        transport: Transport = "rtu_over_tcp" if rtu_over_tcp else "tcp"
        line = LineSpec(id="probe", transport=transport, host=host, port=port, timeout=timeout)
    fn: Function = function  # type: ignore[assignment]  # checked against FUNCTION_CODES above
    outcome = await read_once(line, unit, fn, start, count)
    code = FUNCTION_CODES[function]
    request = (
        f"{line.transport} {line.endpoint} unit {unit} FC{code:02d} "
        f"address {start} (0x{start:04X}) count {count}"
    )
    problem = describe_outcome(outcome)
    words = outcome.registers()
    if problem is not None or words is None:
        print(f"probe: no data from {request}: {problem}", file=sys.stderr)
        return 1
    print(request)
    if bits:  # coils and discrete inputs are one bit each: list them, eight to a row
        for i in range(0, len(words), 8):
            row = " ".join(str(b) for b in words[i : i + 8])
            print(f"{start + i:5d} (0x{start + i:04X}): {row}")
        return 0
    print("raw: " + " ".join(f"{w:04X}" for w in words))
    for text in format_interpretations(start, words):
        print(text)
    return 0
