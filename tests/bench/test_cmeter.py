"""The benches' C meter server (bench/cmeter) builds, serves every meter on its own port, and answers a read
with the words the Python simulator gives for the same registers (pymodbus as an independent client)."""

from __future__ import annotations

from pymodbus.client import ModbusTcpClient

from bench.cmeter import HOLDING_START, CMeterServer, simulator_words


def read(port: int, function: int, address: int, count: int) -> list[int]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    assert client.connect(), f"cannot connect to the C meter server on {port}"
    try:
        if function == 4:
            rr = client.read_input_registers(address, count=count, device_id=1)
        else:
            rr = client.read_holding_registers(address, count=count, device_id=1)
        assert not rr.isError(), rr
        return list(rr.registers)
    finally:
        client.close()


def test_cmeter_answers_what_the_python_simulator_answers() -> None:
    with CMeterServer(5) as server:
        assert len(set(server.ports)) == 5
        # voltages and currents (0-11), total power (52-53), frequency (70-71), the line voltages (200-205)
        for address, count in ((0, 12), (52, 2), (70, 2), (200, 6)):
            for port in (server.ports[0], server.ports[4]):
                assert read(port, 4, address, count) == simulator_words("input", address, count)
        assert read(server.ports[2], 3, HOLDING_START, 2) == simulator_words("holding", HOLDING_START, 2)
        assert simulator_words("input", 0, 2) != [0, 0]  # a voltage, not an empty image
        requests, registers, failed = server.stats()
    assert (requests, registers, failed) == (4 * 2 + 1, 2 * (12 + 2 + 2 + 6) + 2, 0)


def test_cmeter_refuses_an_address_outside_the_sdm630_map() -> None:
    with CMeterServer(1) as server:
        client = ModbusTcpClient("127.0.0.1", port=server.ports[0], timeout=5)
        assert client.connect()
        try:
            rr = client.read_input_registers(0x300, count=2, device_id=1)
        finally:
            client.close()
        assert rr.isError() and rr.exception_code == 2  # illegal data address, as the Python simulator says
