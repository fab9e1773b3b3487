"""`meterwatch probe` against the simulators: TCP, RTU over TCP and RTU on a pseudo-terminal.

Values are set in the simulated world (ManualClock: they stay put), read back by probe, and must appear in the
row of the byte/word order the profile declares, and only there.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from drivers.modbus.probe import all_interpretations, run_probe
from tests.fixtures.sim import SimHandle
from tests.helpers import free_port

ROW = re.compile(
    r"^\s+(?P<addr>\d+) \(0x[0-9A-F]{4}\) (?P<order>ABCD|CDAB|BADC|DCBA) "
    r"\(byte_order: (?P<bo>\w+)\s+word_order: (?P<wo>\w+)\s*\)\s+float(?P<bits>32|64)\s+(?P<real>\S+)"
)


def float_rows(out: str) -> dict[tuple[int, str, int], float]:
    """(address, order, bits) -> the float shown in that row."""
    rows = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            rows[(int(m["addr"]), m["order"], int(m["bits"]))] = float(m["real"])
    return rows


async def probe(
    capsys: pytest.CaptureFixture[str],
    *,
    host: str | None = "127.0.0.1",
    port: int = 502,
    serial: str | None = None,
    rtu_over_tcp: bool = False,
    unit: int = 1,
    address: str = "0",
    count: int = 2,
    function: str = "holding",
    timeout: float = 1.0,
) -> tuple[int, str, str]:
    code = await run_probe(
        host, port, serial, rtu_over_tcp, 9600, "N", 1, unit, address, count, function, timeout
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_interpretations_of_a_known_pair() -> None:
    # 230.0 as float32 is 0x4366 0x0000; read low word first it is 0x0000 0x4366.
    by_order = {(it.order, it.width): it for it in all_interpretations([0x4366, 0x0000])}
    assert by_order[("ABCD", 2)].real == 230.0
    assert by_order[("ABCD", 2)].unsigned == 0x43660000
    assert by_order[("CDAB", 2)].unsigned == 0x00004366
    assert by_order[("BADC", 2)].unsigned == 0x66430000
    assert by_order[("DCBA", 2)].unsigned == 0x00006643
    singles = [it for it in all_interpretations([0x8001]) if it.width == 1]
    assert [(s.signed, s.unsigned) for s in singles] == [(-32767, 0x8001)]
    negative = {it.order: it for it in all_interpretations([0xFFFF, 0xFFFE]) if it.width == 2}
    assert negative["ABCD"].signed == -2
    assert negative["CDAB"].signed == -65537


async def test_sdm630_float32_over_tcp_in_abcd_row(
    sim: SimHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.world.set_value("T-sdm630", "voltage_l1", 231.5)
    sim.world.set_value("T-sdm630", "voltage_l2", 229.25)
    code, out, err = await probe(capsys, port=sim.ports["tcp"], unit=1, count=4, function="input")
    assert code == 0, err
    assert "tcp 127.0.0.1" in out and "FC04 address 0 (0x0000) count 4" in out
    assert "raw: 4367 8000 4365 4000" in out
    rows = float_rows(out)
    assert rows[(0, "ABCD", 32)] == 231.5
    assert rows[(2, "ABCD", 32)] == 229.25
    assert "(byte_order: big    word_order: big   )" in out
    others = [v for (a, o, b), v in rows.items() if (a, o) not in ((0, "ABCD"), (2, "ABCD")) and b == 32]
    assert 231.5 not in others and 229.25 not in others


async def test_tuf2000m_low_word_first_over_tcp_in_cdab_row(
    sim: SimHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.world.set_value("T-tuf", "flow", 12.25)
    code, out, err = await probe(capsys, port=sim.ports["tcp"], unit=4, address="0x0000", count=2)
    assert code == 0, err
    rows = float_rows(out)
    assert rows[(0, "CDAB", 32)] == 12.25
    assert rows[(0, "ABCD", 32)] != 12.25
    cdab = next(line for line in out.splitlines() if ROW.match(line) and " CDAB " in line)
    assert "byte_order: big" in cdab and "word_order: little" in cdab


async def test_rtu_over_tcp(sim: SimHandle, capsys: pytest.CaptureFixture[str]) -> None:
    sim.world.set_value("R-sdm120", "voltage_l1", 238.0)
    code, out, err = await probe(
        capsys, port=sim.ports["rtutcp"], rtu_over_tcp=True, unit=2, count=2, function="input"
    )
    assert code == 0, err
    assert out.startswith("rtu_over_tcp ")
    assert float_rows(out)[(0, "ABCD", 32)] == 238.0


async def test_rtu_on_a_pty(sim: SimHandle, capsys: pytest.CaptureFixture[str]) -> None:
    sim.world.set_value("P-tuf", "flow", 3.5)
    code, out, err = await probe(capsys, host=None, serial=str(sim.pty), unit=3, count=4)
    assert code == 0, err
    rows = float_rows(out)
    assert rows[(0, "CDAB", 32)] == 3.5
    assert (0, "ABCD", 64) in rows  # four registers: the 64-bit windows are shown too


async def test_address_the_device_lacks_is_a_clear_error(
    sim: SimHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await probe(capsys, port=sim.ports["tcp"], unit=1, address="0x9000", function="input")
    assert code == 1
    assert out == ""
    assert "address 36864 (0x9000)" in err
    assert "Modbus exception 02 (illegal data address)" in err
    assert "check --address" in err


async def test_silent_unit_times_out(sim: SimHandle, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = await probe(capsys, port=sim.ports["tcp"], unit=77, timeout=0.3)
    assert code == 1
    assert "timeout" in err and "check --unit" in err


async def test_nothing_listening_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _out, err = await probe(capsys, port=port)
    assert code == 1
    assert f"127.0.0.1:{port}" in err and "connect call failed" in err.lower()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--address", "zz"], "--address must be a number"),
        (["--address", "70000"], "outside 0..65535"),
        (["--address", "0", "--function", "relay"], "--function must be holding, input, coil or discrete"),
        (["--address", "0", "--serial", "/dev/null"], "give either --host"),
    ],
)
def test_bad_arguments_name_the_option(args: list[str], expected: str) -> None:
    r = _cli(["--host", "127.0.0.1", "--port", str(free_port()), *args])
    assert r.returncode == 2
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_end_to_end(sim: SimHandle) -> None:
    """The command line: a good read exits 0; an exception or an unreachable host exits 1, no traceback."""
    sim.world.set_value("T-tuf", "flow", 12.25)
    port = str(sim.ports["tcp"])
    good = _cli(["--host", "127.0.0.1", "--port", port, "--unit", "4", "--address", "0"])
    assert good.returncode == 0, good.stderr
    assert float_rows(good.stdout)[(0, "CDAB", 32)] == 12.25
    bad = _cli(["--host", "127.0.0.1", "--port", port, "--unit", "4", "--address", "0x9000"])
    assert bad.returncode == 1
    assert "illegal data address" in bad.stderr and "Traceback" not in bad.stderr
    gone = _cli(["--host", "127.0.0.1", "--port", str(free_port()), "--address", "0"])
    assert gone.returncode == 1
    assert "connect call failed" in gone.stderr.lower() and "Traceback" not in gone.stderr
