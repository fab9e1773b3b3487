"""Line actors on the built-in Modbus TCP client: which client a line gets, several pipelined connections,
the schedule staggered across every line of the site and gathered on the grid."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

import pytest

from drivers.modbus import line as line_module
from drivers.modbus.line import GRID, Connection, LineActor, on_grid
from drivers.modbus.tcp import TcpConnection
from gateway.app.modbus import build
from gateway.config import load_site
from gateway.core.bus import Bus
from tests.drivers.modbus.test_poller import Actors, Recorder, exact_values, specs
from tests.fixtures.sim import SimHandle
from tests.helpers import eventually as until


async def test_each_line_gets_its_client(sim: SimHandle) -> None:
    by_id = {line.id: (line, devices) for line, devices in specs(sim.site)}

    async def emit(event: object) -> None:  # never called: nothing runs
        raise AssertionError(event)

    tcp_line, tcp_devices = by_id["tcp"]
    actor = LineActor(tcp_line, tcp_devices, emit)
    (conn,) = actor.connections
    assert isinstance(conn, TcpConnection)
    # one connection, one request at a time: the pollers call it directly, no pool or lock in between
    assert all(p.read == conn.read for p in actor.pollers.values())

    reference = LineActor(dataclasses.replace(tcp_line, client="pymodbus"), tcp_devices, emit)
    assert [type(c) for c in reference.connections] == [Connection]
    assert all(p.read == reference.read for p in reference.pollers.values())

    for line_id in ("rtutcp", "pty"):  # RTU framing: pymodbus whatever the line says
        line, devices = by_id[line_id]
        assert [type(c) for c in LineActor(line, devices, emit).connections] == [Connection]

    pooled = LineActor(dataclasses.replace(tcp_line, max_connections=2), tcp_devices, emit)
    assert [type(c) for c in pooled.connections] == [TcpConnection, TcpConnection]
    assert all(p.read == pooled.read for p in pooled.pollers.values())


async def test_several_pipelined_connections_poll_every_device_exactly(sim: SimHandle) -> None:
    ((line, devices),) = specs(sim.site, ["tcp"], poll_interval=0.2, max_connections=2, pipeline=2)
    expected = {d.id: exact_values(sim, d.id) for d in devices}
    rec = Recorder()
    async with Actors([(line, devices)], rec) as actors:
        actor = actors["tcp"]
        await until(
            lambda: all(len(rec.samples(d.id)) >= 3 for d in devices),
            15,
            "three cycles of every device",
        )
        assert actor._pool is not None and actor._pool.qsize() <= 4  # two connections, two requests each
        stats = actor.stats
        device_errors = {d: dict(s.errors) for d, s in actor.device_stats.items()}
    for d, values in expected.items():
        got = rec.latest(d)
        assert {q: got[q] for q in values} == values, d
    assert stats.errors == {} and all(e == {} for e in device_errors.values()), device_errors
    assert sum(isinstance(c, TcpConnection) and c.connected is False for c in actors["tcp"].connections) == 2


async def test_the_site_staggers_its_lines(sim: SimHandle) -> None:
    actors = build(load_site(sim.site_path), Bus())
    assert [a.line.id for a in actors] == ["tcp", "rtutcp", "pty"]
    assert [a.phase for a in actors] == [0.0, 1 / 3, 2 / 3]


async def test_lines_start_their_cycles_in_phase_order(sim: SimHandle) -> None:
    """Four one-device lines at phases 0, 1/4, 2/4, 3/4 of a 2 s interval: first reads in that order."""
    ((line, devices),) = specs(sim.site, ["tcp"], poll_interval=2.0)
    rec = Recorder()
    order = [3, 1, 0, 2]  # line k polls devices[order[k]]: phase order is not the file's device order
    lines = [(dataclasses.replace(line, id=f"l{k}"), [devices[i]]) for k, i in enumerate(order)]
    async with Actors(lines, rec) as actors:
        for k, actor in enumerate(actors.actors):
            actor.phase = k / 4
        await until(lambda: all(rec.samples(d.id) for d in devices), 10, "a first sample from every device")
    first = sorted(devices, key=lambda d: rec.samples(d.id)[0].ts)
    assert [d.id for d in first] == [devices[i].id for i in order]


def test_on_grid_is_the_start_of_the_slot() -> None:
    assert on_grid(1000.0) == on_grid(1000.05) == on_grid(1000.0999) == pytest.approx(1000.0)
    assert on_grid(1000.1) == pytest.approx(1000.1)
    assert on_grid(1000.25) == on_grid(1000.2) != on_grid(1000.3)


async def test_cycles_start_on_the_grid_in_shared_slots(
    sim: SimHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty one-device lines spread over a 1 s interval: every cycle is due at a point of the grid, so the
    twenty share at most 11 slots (10 in an interval, and the lines' starts may straddle one more), and the
    devices of a slot wait for the same deadline."""
    ((line, devices),) = specs(sim.site, ["tcp"], poll_interval=1.0)
    dues: defaultdict[str, list[float]] = defaultdict(list)
    sleep_until = line_module._sleep_until

    async def recording(loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        dues[task.get_name()].append(when)
        await sleep_until(loop, when)

    monkeypatch.setattr(line_module, "_sleep_until", recording)
    lines = [
        (dataclasses.replace(line, id=f"l{k}"), [dataclasses.replace(devices[0], id=f"d{k}")])
        for k in range(20)
    ]
    async with Actors(lines, Recorder()) as actors:
        for k, actor in enumerate(actors.actors):
            actor.phase = k / 20
        await until(
            lambda: all(len(dues[f"poll:d{k}"]) >= 2 for k in range(20)), 15, "two sleeps of every device"
        )
    whens = [w for ws in dues.values() for w in ws]
    assert all(abs(w / GRID - round(w / GRID)) < 1e-6 for w in whens), whens
    first = {dues[f"poll:d{k}"][0] for k in range(20)}
    assert len(first) <= 11, sorted(first)
