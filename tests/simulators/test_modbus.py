"""The simulated Modbus lines, read by pymodbus clients over real sockets and a real pseudo-terminal."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.codec import decode
from gateway.config.profile import Point
from simulators.modbus_server import crc_ok, rtu_frame
from tests.fixtures.sim import SimHandle

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


@asynccontextmanager
async def client_for(sim: SimHandle, line_id: str, timeout: float = 0.5) -> AsyncIterator[Client]:
    line = sim.site.line(line_id)
    client: Client
    if line.transport == "tcp":
        client = AsyncModbusTcpClient("127.0.0.1", port=line.port or 0, timeout=timeout, retries=0)
    elif line.transport == "rtu_over_tcp":
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=line.port or 0, framer=FramerType.RTU, timeout=timeout, retries=0
        )
    else:
        client = AsyncModbusSerialClient(str(sim.pty), baudrate=line.baudrate, timeout=timeout, retries=0)
    assert await client.connect(), f"cannot connect to line {line_id}"
    try:
        yield client
    finally:
        client.close()


async def read_point(client: Client, unit: int, p: Point) -> Any:
    fn = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[p.function or "holding"]
    return await fn(p.pdu, count=p.width, device_id=unit)


def nice_value(p: Point, i: int) -> float:
    """A value every encoding of `p` carries exactly (so the round trip must be exact)."""
    if p.quantity == "pressure_decimals":
        return 2.0
    if p.quantity == "error_code":
        return 9.0  # bits 0 and 3: pipe_empty (bit 3) must read 1
    if p.type == "bit":
        return 1.0
    if p.type.startswith(("int", "uint")) and p.scale == 1.0 and p.decimals_register is None:
        return float(i + 2)
    return i + 2.5


@pytest.mark.parametrize("line_id", ["tcp", "rtutcp", "pty"])
async def test_every_profile_round_trips_exact_values(sim: SimHandle, line_id: str) -> None:
    world = sim.world
    checked = 0
    async with client_for(sim, line_id) as client:
        for dev in sim.site.devices_on(line_id):
            profile = sim.site.profiles[dev.profile or ""]
            state = world.devices[dev.id]
            for i, p in enumerate(profile.points):
                if p.quantity not in state.bit_sources:  # bits of another point's register follow it
                    world.set_value(dev.id, p.quantity, nice_value(p, i))
            for p in profile.points:
                rr = await read_point(client, dev.unit or 1, p)
                assert not rr.isError(), f"{dev.id}.{p.quantity}: {rr}"
                words = rr.bits[:1] if p.function in ("coil", "discrete") else rr.registers
                decimals = None
                if p.decimals_register is not None:
                    decimals = int(world.value(dev.id, "pressure_decimals"))
                got = decode(p, words, decimals)
                assert got == world.value(dev.id, p.quantity), f"{dev.id}.{p.quantity} on {line_id}"
                checked += 1
    assert checked >= 20


async def test_known_values_on_the_wire(sim: SimHandle) -> None:
    """The DTSU666 scaling and the TUF-2000M low-word-first order, checked on the raw registers."""
    sim.world.set_value("T-dtsu666", "voltage_l1", 230.0)
    sim.world.set_value("T-tuf", "flow", 12.5)
    async with client_for(sim, "tcp") as client:
        rr = await client.read_holding_registers(0x2006, count=2, device_id=2)
        assert rr.registers == [0x450F, 0xC000]  # 2300.0 raw = 230.0 V x 10
        rr = await client.read_holding_registers(0, count=2, device_id=4)
        assert rr.registers == [0x0000, 0x4148]  # 12.5 = 0x41480000, low word first


async def test_merged_read_spans_gaps_with_zeros(sim: SimHandle) -> None:
    async with client_for(sim, "pty") as client:
        rr = await client.read_input_registers(0, count=0x50, device_id=1)  # SDM630 0x00..0x4F in one read
        assert not rr.isError()
        assert len(rr.registers) == 0x50
        assert rr.registers[0x24:0x34] == [0] * 16  # undefined registers between points
        assert rr.registers[0:2] == [0x4366, 0x0000]  # 230.0 V


async def test_dead_device_is_silent_while_neighbours_answer(sim: SimHandle) -> None:
    async with client_for(sim, "rtutcp", timeout=0.3) as client:
        sim.world.stop_device("R-sdm120")
        with pytest.raises(ModbusException):
            await client.read_input_registers(0, count=2, device_id=2)
        rr = await client.read_holding_registers(0x2006, count=2, device_id=1)
        assert not rr.isError()
        sim.world.restore_device("R-sdm120")
        rr = await client.read_input_registers(0, count=2, device_id=2)
        assert rr.registers == [0x4366, 0x0000]


async def test_unpowered_converter_silences_the_line_and_comes_back(sim: SimHandle) -> None:
    async with client_for(sim, "tcp", timeout=0.3) as client:
        sim.world.cut_power("B1")
        with pytest.raises(ModbusException):
            await client.read_input_registers(0, count=2, device_id=1)  # the meter of the cut circuit
        with pytest.raises(ModbusException):
            await client.read_holding_registers(4, count=1, device_id=3)  # a water meter on the same line
        sim.world.restore_power("B1")
        rr = await client.read_holding_registers(4, count=1, device_id=3)
        assert rr.registers == [300]


async def test_line_powered_meters_go_silent_water_meter_answers_on_pty(sim: SimHandle) -> None:
    async with client_for(sim, "pty", timeout=0.3) as client:
        sim.world.cut_power("B3")
        with pytest.raises(ModbusException):
            await client.read_input_registers(0, count=2, device_id=1)
        rr = await client.read_holding_registers(0, count=2, device_id=3)  # P-tuf measures water: answers
        assert not rr.isError()


async def test_unknown_unit_is_silent(sim: SimHandle) -> None:
    async with client_for(sim, "tcp", timeout=0.3) as client:
        with pytest.raises(ModbusException):
            await client.read_input_registers(0, count=2, device_id=77)


async def test_exception_codes_over_pymodbus(sim: SimHandle) -> None:
    async with client_for(sim, "tcp") as client:
        rr = await client.read_holding_registers(9000, count=2, device_id=3)
        assert rr.isError() and rr.exception_code == 2
        rr = await client.read_coils(0, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 2


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_exception_codes_on_raw_mbap(sim: SimHandle) -> None:
    with socket.create_connection(("127.0.0.1", sim.ports["tcp"]), timeout=2) as s:
        s.sendall(_mbap(7, 1, bytes.fromhex("11")))  # report server id: illegal function
        assert _recv(s, 9) == _mbap(7, 1, bytes.fromhex("91 01"))
        s.sendall(_mbap(8, 1, bytes.fromhex("04 0000 007E")))  # 126 registers: illegal value
        assert _recv(s, 9) == _mbap(8, 1, bytes.fromhex("84 03"))
        s.sendall(_mbap(9, 1, bytes.fromhex("04 0000 0002")))
        reply = _recv(s, 13)
        assert reply[:9] == struct.pack(">HHHB", 9, 0, 7, 1) + bytes.fromhex("04 04")
        assert reply[9:] == bytes.fromhex("4366 0000")


def test_bad_crc_is_ignored_and_the_next_frame_answered(sim: SimHandle) -> None:
    good = bytes.fromhex("01 03 20 06 00 02")
    good = rtu_frame(good[0], good[1:])
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    with socket.create_connection(("127.0.0.1", sim.ports["rtutcp"]), timeout=2) as s:
        s.sendall(bad)
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(64)  # a device never answers a corrupted frame
        s.settimeout(2)
        s.sendall(good)
        reply = _recv(s, 9)
        assert crc_ok(reply) and reply[:3] == bytes.fromhex("01 03 04")
        assert reply[3:7] == bytes.fromhex("450F C000")


async def test_slow_device_answers_after_its_delay(sim: SimHandle) -> None:
    sim.world.set_delay("R-pressure", 0.4)
    async with client_for(sim, "rtutcp", timeout=0.1) as client:
        with pytest.raises(ModbusException):
            await client.read_holding_registers(4, count=1, device_id=3)
    async with client_for(sim, "rtutcp", timeout=2.0) as client:
        rr = await client.read_holding_registers(4, count=1, device_id=3)
        assert rr.registers == [300]
