"""RTU framing and request handling of the simulated Modbus devices, against CRC-checked frames.

Vectors: real Modbus RTU frames whose CRC-16/MODBUS was checked independently.
"""

from __future__ import annotations

import struct

import pytest

from drivers.modbus.crc import crc16
from gateway.config import load_site
from gateway.config.profile import builtin_profiles
from simulators.modbus_server import (
    GAP_FILL,
    build_image,
    crc_ok,
    respond,
    rtu_frame,
    rtu_request_length,
)
from simulators.world import ManualClock, World

REQUESTS = [
    "01 04 00 00 00 02 71 CB",  # SDM: read V L1
    "01 03 20 12 00 02 6F CE",  # DTSU666: read Pt
    "01 03 10 28 00 02 40 C3",  # DTSU666: read ExpEp
    "01 03 00 06 00 01 64 0B",  # DTSU666: IrAt
    "01 03 00 07 00 01 35 CB",  # DTSU666: UrAt
    "01 03 00 04 00 01 C5 CB",  # pressure transmitter: reg 4 x 1 (corrected CRC)
]
RESPONSES = [
    "01 04 04 43 66 00 00 0E 1F",  # 230.0 V
    "01 03 04 45 00 00 00 EF 3F",  # 2048.0 raw -> 204.8 W
    "01 03 04 44 0D 37 0A E9 37",  # 564.86 kWh
    "01 03 02 00 01 79 84",
    "01 03 02 00 0A 38 43",
    "01 04 04 43 66 33 34 1B 38",  # DDSU666 230.2 V as a real meter sent it
]


@pytest.mark.parametrize("frame", REQUESTS + RESPONSES)
def test_crc_of_research_vectors(frame: str) -> None:
    raw = bytes.fromhex(frame)
    assert crc_ok(raw)
    assert rtu_frame(raw[0], raw[1:-2]) == raw
    assert struct.pack("<H", crc16(raw[:-2])) == raw[-2:]


def test_bad_crc_is_detected() -> None:
    raw = bytearray(bytes.fromhex(REQUESTS[0]))
    raw[-1] ^= 0x01
    assert not crc_ok(bytes(raw))
    raw = bytearray(bytes.fromhex(REQUESTS[0]))
    raw[3] ^= 0x10
    assert not crc_ok(bytes(raw))


def test_request_length_by_function() -> None:
    assert rtu_request_length(b"\x01") == 0
    assert rtu_request_length(bytes.fromhex(REQUESTS[0])[:5]) == 8
    assert rtu_request_length(bytes.fromhex("01 10 00 00 00 02")) == 0  # needs the byte count
    assert rtu_request_length(bytes.fromhex("01 10 00 00 00 02 04")) == 13
    assert rtu_request_length(bytes.fromhex("01 11")) is None  # unknown length: ends at silence


@pytest.fixture
def world() -> World:
    site = load_site("deploy/examples/compound.yaml")
    return World(site, clock=ManualClock(1_700_000_000.0))


def _ask(world: World, device: str, profile: str, request: str) -> bytes:
    """The RTU response frame of `device` to an RTU request frame given in hex."""
    raw = bytes.fromhex(request)
    pdu = respond(world, device, build_image(builtin_profiles()[profile]), raw[1:-2])
    return rtu_frame(raw[0], pdu)


def test_sdm_voltage_frame(world: World) -> None:
    world.set_value("B1-main", "voltage_l1", 230.0)
    assert _ask(world, "B1-main", "sdm630", REQUESTS[0]) == bytes.fromhex(RESPONSES[0])


def test_dtsu_scaled_frames(world: World) -> None:
    world.set_value("B1-pump", "power_total", 204.8)
    assert _ask(world, "B1-pump", "dtsu666", REQUESTS[1]) == bytes.fromhex(RESPONSES[1])
    world.set_value("B1-pump", "energy_export", 564.86)
    assert _ask(world, "B1-pump", "dtsu666", REQUESTS[2]) == bytes.fromhex(RESPONSES[2])


def test_pressure_with_decimals_register(world: World) -> None:
    world.set_value("B1-pressure", "pressure", 3.25)
    pdu = respond(
        world, "B1-pressure", build_image(builtin_profiles()["rs485-pressure"]), b"\x03\x00\x03\x00\x02"
    )
    assert pdu == bytes.fromhex("03 04 0002 0145")  # 2 decimals, raw 325
    world.set_value("B1-pressure", "pressure_decimals", 1)
    pdu = respond(
        world, "B1-pressure", build_image(builtin_profiles()["rs485-pressure"]), b"\x03\x00\x03\x00\x02"
    )
    assert pdu == bytes.fromhex("03 04 0001 0020")  # 3.25 at 1 decimal rounds half to even: 32


def test_exception_codes(world: World) -> None:
    image = build_image(builtin_profiles()["sdm630"])

    def ask(pdu: str) -> bytes:
        return respond(world, "B1-main", image, bytes.fromhex(pdu))

    assert ask("11") == bytes.fromhex("91 01")  # report server id: not supported
    assert ask("06 0000 0001") == bytes.fromhex("86 01")  # writes: not supported
    assert ask("04 0000 0000") == bytes.fromhex("84 03")  # count 0
    assert ask("04 0000 007E") == bytes.fromhex("84 03")  # count 126
    assert ask("04 0000 00") == bytes.fromhex("84 03")  # truncated PDU
    assert ask("04 2000 0002") == bytes.fromhex("84 02")  # far outside the map
    assert ask("03 0000 0002") == bytes.fromhex("83 02")  # SDM measurements are input registers
    assert ask("04 FFFF 0002") == bytes.fromhex("84 02")  # past the end of the address space
    assert ask("01 0000 0001") == bytes.fromhex("81 02")  # no coils at all


def test_gaps_between_points_read_zero_but_edges_do_not(world: World) -> None:
    image = build_image(builtin_profiles()["sdm630"])
    # 0x0024..0x0033 are undefined in the profile, between power_factor_l3 (0x22) and power_total (0x34).
    pdu = respond(world, "B1-main", image, struct.pack(">BHH", 4, 0x24, 16))
    assert pdu == bytes([4, 32]) + bytes(32)
    last = max(p.pdu + p.width for p in builtin_profiles()["sdm630"].points)
    assert respond(world, "B1-main", image, struct.pack(">BHH", 4, last - 2, 3))[0] == 0x84
    # DTSU666: before the first point (energy_import at 0x101E) and in the big gap up to 0x2000.
    dtsu = build_image(builtin_profiles()["dtsu666"])
    assert respond(world, "B1-pump", dtsu, struct.pack(">BHH", 3, 0x1000, 2)) == bytes.fromhex("83 02")
    assert GAP_FILL < 0x2000 - 0x102A
    assert respond(world, "B1-pump", dtsu, struct.pack(">BHH", 3, 0x1800, 2)) == bytes.fromhex("83 02")


def test_shared_register_bits(world: World) -> None:
    """TUF-2000M REG72 holds error_code and pipe_empty (bit 3): both read from the same word."""
    image = build_image(builtin_profiles()["tuf2000m"])
    world.set_error_bit("B1-flow", 3)
    world.set_error_bit("B1-flow", 0)
    assert world.value("B1-flow", "pipe_empty") == 1.0
    pdu = respond(world, "B1-flow", image, struct.pack(">BHH", 3, 71, 1))
    assert pdu == bytes.fromhex("03 02 0009")


def test_value_out_of_type_range_is_device_failure(world: World) -> None:
    world.set_value("B1-pressure", "pressure", 400.0)  # raw 40000 does not fit int16 at 2 decimals
    image = build_image(builtin_profiles()["rs485-pressure"])
    assert respond(world, "B1-pressure", image, struct.pack(">BHH", 3, 4, 1)) == bytes.fromhex("83 04")
