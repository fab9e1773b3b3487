"""Codec: CRC-checked RTU frames as test vectors, plus round trips for every type and order."""

from __future__ import annotations

import itertools
import math
import struct

import pytest

from drivers.modbus.codec import decode, encode, encode_into, float32_value, int_to_words, words_to_int
from drivers.modbus.crc import crc_ok
from gateway.config.profile import Point, builtin_profiles


def response_words(hexframe: str) -> list[int]:
    """Register words of a read-registers RTU response, after checking its CRC."""
    raw = bytes.fromhex(hexframe)
    assert crc_ok(raw), "bad CRC in test vector"
    body = raw[:-2]
    count = body[2]
    data = body[3 : 3 + count]
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, count, 2)]


def point(profile: str, quantity: str) -> Point:
    return builtin_profiles()[profile].point(quantity)


def test_sdm_voltage_frame() -> None:
    words = response_words("01 04 04 43 66 00 00 0E 1F")
    assert decode(point("sdm630", "voltage_l1"), words) == 230.0
    assert decode(point("sdm120", "voltage_l1"), words) == 230.0
    assert encode(point("sdm630", "voltage_l1"), 230.0) == words


def test_dtsu_active_power_frame_is_scaled_exactly() -> None:
    words = response_words("01 03 04 45 00 00 00 EF 3F")
    assert decode(point("dtsu666", "power_total"), words) == 204.8
    assert encode(point("dtsu666", "power_total"), 204.8) == words


def test_dtsu_export_energy_frame() -> None:
    words = response_words("01 03 04 44 0D 37 0A E9 37")
    assert decode(point("dtsu666", "energy_export"), words) == 564.86
    assert encode(point("dtsu666", "energy_export"), 564.86) == words


def test_ddsu_voltage_frame() -> None:
    # The Tasmota frame carries 0x43663334: one float32 step above the float32 nearest 230.2, so the meter
    # really reported 230.20001; it is 230.2 V to any display precision.
    words = response_words("01 04 04 43 66 33 34 1B 38")
    value = decode(point("ddsu666", "voltage_l1"), words)
    assert value == 230.20001
    assert value == pytest.approx(230.2, abs=1e-4)
    assert decode(point("ddsu666", "voltage_l1"), encode(point("ddsu666", "voltage_l1"), 230.2)) == 230.2


def test_tuf_low_word_first_example() -> None:
    # arivin29's worked example: bytes 80 6B 42 12 on the wire, low word first.
    words = [0x806B, 0x4212]
    value = decode(point("tuf2000m", "flow"), words)
    assert value == pytest.approx(36.6254, abs=5e-5)
    assert encode(point("tuf2000m", "flow"), value) == words
    # Read big-endian the same words are a tiny negative number: the order setting matters.
    as_abcd = Point(quantity="x", function="holding", address=0, type="float32")
    assert abs(decode(as_abcd, words)) < 1e-30


def test_dtsu_scaling_of_every_measurement() -> None:
    cases = {
        "voltage_l1": 231.4,
        "current_l2": 12.345,
        "power_l3": 1234.5,
        "power_factor": 0.987,
        "frequency": 49.99,
    }
    for quantity, value in cases.items():
        p = point("dtsu666", quantity)
        words = encode(p, value)
        raw = struct.unpack(">f", struct.pack(">HH", *words))[0]
        assert raw == pytest.approx(value / p.scale, rel=1e-6), quantity
        assert decode(p, words) == value, quantity


def test_ddsu_power_is_kilowatts_on_the_wire() -> None:
    p = point("ddsu666", "power_total")
    words = encode(p, 1234.0)
    assert struct.unpack(">f", struct.pack(">HH", *words))[0] == pytest.approx(1.234)
    assert decode(p, words) == 1234.0


def test_pressure_uses_decimals_register() -> None:
    p = point("rs485-pressure", "pressure")
    assert decode(p, [325], decimals=2) == 3.25
    assert decode(p, [325], decimals=0) == 325.0
    assert decode(p, [0xFFFF - 99], decimals=1) == -10.0  # int16 -100
    assert encode(p, 3.25, decimals=2) == [325]
    with pytest.raises(ValueError, match="decimals register"):
        decode(p, [325])
    with pytest.raises(ValueError, match="int16 range"):
        encode(p, 400.0, decimals=2)  # 40000 does not fit int16


def test_tuf_error_bits_and_signal_byte() -> None:
    tuf = builtin_profiles()["tuf2000m"]
    error, empty, quality = tuf.point("error_code"), tuf.point("pipe_empty"), tuf.point("signal_quality")
    assert error.pdu == empty.pdu == 71 and quality.pdu == 91
    reg72 = encode_into(empty, 1, [0b0000_0000_0000_0001])
    assert reg72 == [0b1001]
    assert decode(error, reg72) == 9.0
    assert decode(empty, reg72) == 1.0
    assert decode(empty, encode_into(empty, 0, reg72)) == 0.0
    assert encode_into(empty, 0, reg72) == [1]
    reg92 = encode_into(quality, 87, [0x0300])  # high byte: working step 3
    assert reg92 == [0x0357]
    assert decode(quality, reg92) == 87.0
    with pytest.raises(ValueError, match="mask"):
        encode(quality, 300)


INT_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
ORDERS = list(itertools.product(["big", "little"], ["big", "little"]))


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@pytest.mark.parametrize("type_", INT_TYPES)
def test_integer_round_trip(type_: str, byte_order: str, word_order: str) -> None:
    p = Point.model_validate(
        {"quantity": "x", "function": "holding", "address": 10, "type": type_,
         "byte_order": byte_order, "word_order": word_order}
    )  # fmt: skip
    bits = 16 * p.width
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if type_.startswith("int") else (0, 2**bits - 1)
    # 64-bit extremes are not floats: test the widest integers a float carries exactly.
    lo_exact, hi_exact = max(lo, -(2**53)), min(hi, 2**53)
    for value in (lo_exact, hi_exact, 0, 1, hi_exact // 3, lo_exact // 7):
        words = encode(p, float(value))
        assert len(words) == p.width and all(0 <= w <= 0xFFFF for w in words)
        assert decode(p, words) == float(value)
    with pytest.raises(ValueError, match="range"):
        encode(p, float(hi) * 4 + 10)


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@pytest.mark.parametrize("type_", ["float32", "float64"])
def test_float_round_trip(type_: str, byte_order: str, word_order: str) -> None:
    p = Point.model_validate(
        {"quantity": "x", "function": "input", "address": 0, "type": type_,
         "byte_order": byte_order, "word_order": word_order}
    )  # fmt: skip
    for value in (0.0, -1.5, 230.2, 49.99, 12345.6, 1e-3, -98765.4):
        assert decode(p, encode(p, value)) == value
    assert math.isnan(decode(p, encode(p, math.nan)))
    assert decode(p, encode(p, math.inf)) == math.inf


def test_orders_lay_out_bytes_as_named() -> None:
    n = 0x11223344
    assert int_to_words(n, 2, "big", "big") == [0x1122, 0x3344]  # ABCD
    assert int_to_words(n, 2, "big", "little") == [0x3344, 0x1122]  # CDAB
    assert int_to_words(n, 2, "little", "big") == [0x2211, 0x4433]  # BADC
    assert int_to_words(n, 2, "little", "little") == [0x4433, 0x2211]  # DCBA
    for bo, wo in ORDERS:
        assert words_to_int(int_to_words(n, 2, bo, wo), bo, wo) == n  # type: ignore[arg-type]


def test_scale_offset_round_trip_is_exact() -> None:
    p = Point(quantity="t", function="holding", address=0, type="int16", scale=0.1, offset=-40)
    assert decode(p, [2300]) == 190.0
    assert decode(p, [1]) == -39.9
    assert encode(p, -39.9) == [1]
    volts = Point(quantity="v", function="holding", address=0, type="uint16", scale=0.1)
    assert decode(volts, [2300]) == 230.0
    assert decode(volts, [2303]) == 230.3


def test_bits_of_coils_and_registers() -> None:
    coil = Point(quantity="c", function="coil", address=5, type="bit")
    assert decode(coil, [1]) == 1.0 and encode(coil, 1) == [1] and encode(coil, 0) == [0]
    reg_bit = Point(quantity="b", function="input", address=5, type="bit", bit=15)
    assert decode(reg_bit, [0x8000]) == 1.0 and decode(reg_bit, [0x7FFF]) == 0.0
    assert encode(reg_bit, 1) == [0x8000]
    with pytest.raises(ValueError, match="0 or 1"):
        decode(coil, [2])


def test_bad_input_is_a_clear_error() -> None:
    p = point("sdm630", "voltage_l1")
    with pytest.raises(ValueError, match=r"voltage_l1 \(input 0\): expected 2 register"):
        decode(p, [1])
    with pytest.raises(ValueError, match=r"not 0\.\.65535"):
        decode(p, [70000, 0])
    with pytest.raises(ValueError, match="does not fit float32"):
        encode(p, 1e300)


def test_float32_shortest_decimal() -> None:
    assert float32_value(0x43663333) == 230.2
    assert float32_value(0x3F800000) == 1.0
    assert math.isnan(float32_value(0x7FC00000))
    # Nine digits are needed for some patterns; the result still maps back to the same bits.
    bits = 0x3DCCCCCD + 1
    value = float32_value(bits)
    assert struct.unpack(">I", struct.pack(">f", value))[0] == bits
