"""The sink against a real VictoriaMetrics: value for value, and nothing lost while it is down."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app.store import build_sink
from gateway.config import Site, load_site
from gateway.core.bus import Bus
from gateway.core.types import DeviceStatus, Sample
from gateway.sink.forwarder import Forwarder
from tests.fixtures.victoria import Victoria
from tests.helpers import eventually

SITE = """\
site: {{id: t1}}
buildings:
  - {{id: B1, domains: [{{id: B1-power, kind: power}}, {{id: B1-water, kind: water}}]}}
lines:
  - {{id: l1, transport: tcp, host: 127.0.0.1, port: 1502}}
devices:
  - {{id: M1, building: B1, domain: B1-power, line: l1, unit: 1, profile: sdm630}}
  - {{id: P1, building: B1, domain: B1-water, line: l1, unit: 2, profile: rs485-pressure}}
  - {{id: T1, building: B1, domain: B1-water, role: tank, source: mqtt}}
influx: {{url: "{url}", bucket: b, org: o, batch_size: 50, flush_interval: 100ms}}
spool: {{mode: {mode}, replay_rate: 100000}}
"""


def make_site(tmp_path: Path, url: str, mode: str = "durable") -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(SITE.format(url=url, mode=mode))
    return load_site(p)


def same(got: dict[int, float], want: dict[int, float]) -> bool:
    """Equal timestamps and values. VictoriaMetrics keeps about 15 significant decimal digits, so a float
    whose shortest repr needs 17 (3.14159 + 0.001 = 3.1425899999999998) comes back as 3.14259."""
    return got.keys() == want.keys() and all(math.isclose(got[k], want[k], rel_tol=1e-13) for k in want)


@dataclass
class Running:
    bus: Bus
    sink: Forwarder


def start(site: Site, state_dir: Path, stop: asyncio.Event) -> tuple[Running, list[asyncio.Task[None]]]:
    bus = Bus()
    fw = build_sink(site, bus, state_dir)
    assert fw is not None
    return Running(bus, fw), [asyncio.create_task(fw.run(stop))]


def samples(t0: float, n: int) -> list[Sample]:
    out = []
    for i in range(n):
        ts = t0 + i
        out.append(Sample("M1", ts, {"voltage_l1": 230.0 + i / 10, "power_total": 1234.5678 + i}))
        quality = "comm_error" if i == 3 else "good"
        out.append(Sample("P1", ts, {"pressure": 3.14159 + i / 1000}, quality=quality))
        out.append(Sample("T1", ts, {"level": 0.1 * i}))
    return out


async def test_what_is_published_comes_back_value_for_value(tmp_path: Path, victoria: Victoria) -> None:
    stop = asyncio.Event()
    rt, tasks = start(make_site(tmp_path, victoria.url), tmp_path / "state", stop)
    t0 = 1_700_000_000.0
    sent = samples(t0, 20)
    for s in sent:
        await rt.bus.publish(s)
    await rt.bus.publish(DeviceStatus("M1", t0, up=True))  # status events are not stored
    stored = '{__name__=~"(power|pressure|level)_.*"}'
    await eventually(lambda: victoria.count(stored) == 20 * 7, what="every point")
    stop.set()
    await asyncio.gather(*tasks)

    assert victoria.points("power_voltage_l1", device="M1", site="t1", building="B1", profile="sdm630") == {
        round((t0 + i) * 1000): 230.0 + i / 10 for i in range(20)
    }
    assert victoria.points("power_power_total", device="M1") == {
        round((t0 + i) * 1000): 1234.5678 + i for i in range(20)
    }
    assert same(
        victoria.points("pressure_pressure", device="P1", domain="B1-water", profile="rs485-pressure"),
        {round((t0 + i) * 1000): 3.14159 + i / 1000 for i in range(20)},
    )
    quality = victoria.points("pressure_quality", device="P1")
    assert quality[round((t0 + 3) * 1000)] == 2 and quality[round((t0 + 4) * 1000)] == 0
    assert same(
        victoria.points("level_level", device="T1", profile="mqtt"),
        {round((t0 + i) * 1000): 0.1 * i for i in range(20)},
    )
    fw = rt.sink
    assert fw.stats.points_written == 60 and fw.buffer.stats.points == 0


@pytest.mark.parametrize("mode", ["durable", "best_effort"])
async def test_samples_wait_while_victoria_is_down_and_all_arrive(
    tmp_path: Path, victoria: Victoria, mode: str
) -> None:
    victoria.stop()
    stop = asyncio.Event()
    rt, tasks = start(make_site(tmp_path, victoria.url, mode), tmp_path / "state", stop)
    fw = rt.sink
    t0 = 1_700_000_100.0
    for s in samples(t0, 30):
        await rt.bus.publish(s)
    await eventually(lambda: fw.buffer.stats.points == 90, what="all points buffered")
    await eventually(lambda: fw.stats.write_errors["unreachable"] > 0, what="a failed write")
    assert fw.stats.points_written == 0
    victoria.start()
    await eventually(lambda: fw.buffer.stats.points == 0, timeout=60, what="the backlog to drain")
    stop.set()
    await asyncio.gather(*tasks)
    assert victoria.count('{__name__=~"(power|pressure|level)_.*"}') == 30 * 7
    assert len(victoria.points("power_voltage_l1", device="M1")) == 30


async def test_spooled_points_survive_a_restart_of_the_sink(tmp_path: Path, victoria: Victoria) -> None:
    victoria.stop()
    site = make_site(tmp_path, victoria.url)
    stop = asyncio.Event()
    rt, tasks = start(site, tmp_path / "state", stop)
    fw = rt.sink
    for s in samples(1_700_000_200.0, 10):
        await rt.bus.publish(s)
    await eventually(lambda: fw.buffer.stats.points == 30, what="spooled")
    stop.set()
    await asyncio.gather(*tasks)

    victoria.start()
    stop2 = asyncio.Event()
    rt2, tasks2 = start(site, tmp_path / "state", stop2)
    fw2 = rt2.sink
    await eventually(lambda: fw2.buffer.stats.points == 0 and fw2.stats.points_written == 30, what="replay")
    stop2.set()
    await asyncio.gather(*tasks2)
    assert len(victoria.points("pressure_pressure", device="P1")) == 10


# Floats whose shortest text needs an exponent: orjson (the encoder's formatter) spells them 1.5e-7, 0.00001,
# 1e+16, where repr writes 1.5e-07, 1e-05, 1e+16. VictoriaMetrics must read each as the same number. Each is
# a series of its own: VictoriaMetrics scales the values of a block of one series together, so 1e-300 next
# to 1e300 in one series would come back as 0 whatever the text.
EXPONENT_VALUES: list[float] = [1e-5, 1.5e-7, -2.5e-12, 1e-300, 1e16, 1.2345678901234568e17, -6.02e23, 1e300]


async def test_floats_written_with_an_exponent_come_back_as_the_same_numbers(
    tmp_path: Path, victoria: Victoria
) -> None:
    stop = asyncio.Event()
    rt, tasks = start(make_site(tmp_path, victoria.url), tmp_path / "state", stop)
    t0 = 1_700_000_300.0
    await rt.bus.publish(Sample("T1", t0, {f"x{i}": v for i, v in enumerate(EXPONENT_VALUES)}))
    n = len(EXPONENT_VALUES)
    await eventually(lambda: victoria.count('{__name__=~"level_x.*"}') == n, what="every point")
    stop.set()
    await asyncio.gather(*tasks)
    assert rt.sink.stats.write_errors == {}
    for i, v in enumerate(EXPONENT_VALUES):
        got = victoria.points(f"level_x{i}", device="T1")
        assert list(got) == [round(t0 * 1000)], got
        assert math.isclose(got[round(t0 * 1000)], v, rel_tol=1e-13, abs_tol=0.0), (got, v)


async def test_a_backlog_on_the_bus_goes_in_whole_batches_several_to_a_commit(
    tmp_path: Path, victoria: Victoria
) -> None:
    """Samples queued faster than one batch a commit: the intake appends whole batches several to a
    transaction (BACKLOG_BATCHES), each still a chunk of batch_size points and one request, and every
    point arrives."""
    stop = asyncio.Event()
    bus = Bus()
    site = make_site(tmp_path, victoria.url)
    fw = build_sink(site, bus, tmp_path / "state")
    assert fw is not None
    t0 = 1_700_100_000.0
    sent = [Sample("T1", t0 + i / 100, {"level": float(i)}) for i in range(1200)]  # 24 batches of 50
    for s in sent:
        await bus.publish(s)
    await bus.publish(DeviceStatus("M1", t0, up=True))  # in the middle of nowhere: not stored, no harm
    task = asyncio.create_task(fw.run(stop))
    try:
        await eventually(lambda: victoria.count('{__name__="level_level"}') == 1200, what="every point")
    finally:
        stop.set()
        await task
    assert fw.stats.samples_in == 1200 and fw.stats.points_written == 1200
    assert fw.stats.write_requests == 24  # a request per batch of 50
    assert fw.buffer.stats.commits <= 24 // 2  # several batches a commit (4 while the backlog lasts)
