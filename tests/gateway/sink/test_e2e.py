"""Issue #3 acceptance, end to end: the real daemon (build_runtime + serve) polls the simulated site over real
sockets and a pty, stores through the sink into a real VictoriaMetrics, and what it polled comes back value
for value, also across a 60 s outage of VictoriaMetrics.

"What the gateway polled" is read from a SampleTap (gateway/sink/tap.py, `meterwatch run --tap`): a blocking
bus subscriber that records every published Sample in the order the sink receives them. The expected
points are computed from those Samples (tests/fixtures/victoria.py: expected_points), independently of the
line encoder, and compared with /api/v1/export.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app.daemon import Runtime, build_runtime, serve
from gateway.config import Site, load_site
from gateway.core.types import Sample
from gateway.sink.forwarder import Forwarder
from gateway.sink.lineproto import LineEncoder
from gateway.sink.tap import SampleTap, read_tap
from simulators.runner import SimulatorThread
from tests.fixtures.sim import SIM_DEVICES, write_sim_site
from tests.fixtures.victoria import PointKey, Victoria, differences, expected_points, same_value
from tests.helpers import eventually

DEVICES = [d[0] for d in SIM_DEVICES]
SELECTOR = '{site="simtest"}'
OUTAGE = 60.0  # seconds VictoriaMetrics is down: the figure of the acceptance


def site_file(tmp_path: Path, url: str, mode: str) -> Path:
    path = write_sim_site(tmp_path)
    text = path.read_text(encoding="utf-8")
    text += (
        f'influx: {{url: "{url}", bucket: mw, org: o, batch_size: 500, flush_interval: 200ms}}\n'
        f"spool: {{mode: {mode}}}\n"
        "http: {enabled: false}\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class RunningDaemon:
    rt: Runtime
    tap_path: Path
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def sink(self) -> Forwarder:
        fw = self.rt.services.sink
        assert fw is not None
        return fw

    def polled(self) -> list[Sample]:
        return read_tap(self.tap_path)

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=30)


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Callable[[str, str], Site]]:
    """Returns make(url, mode): writes the site file, starts its simulators (real-time clock, 1 % noise so
    consecutive values differ) and returns the loaded Site."""
    threads: list[SimulatorThread] = []

    def make(url: str, mode: str) -> Site:
        site = load_site(site_file(tmp_path, url, mode))
        threads.append(SimulatorThread(site, mqtt=False, noise=0.01, seed=7).start())
        return site

    yield make
    for t in threads:
        t.stop()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Callable[[Site], RunningDaemon]]:
    running: list[RunningDaemon] = []

    def start(site: Site) -> RunningDaemon:
        rt = build_runtime(site, tmp_path / "state")
        tap_path = tmp_path / "tap.jsonl"
        rt.components.insert(0, SampleTap(rt.bus, tap_path))
        stop = asyncio.Event()
        d = RunningDaemon(rt, tap_path, stop, asyncio.create_task(serve(rt, stop)))
        running.append(d)
        return d

    yield start
    for d in running:
        if not d.task.done():
            await d.shutdown()


async def stored(victoria: Victoria) -> dict[PointKey, float]:
    points, _ = await asyncio.to_thread(victoria.stored, SELECTOR)
    return points


async def until_stored(victoria: Victoria, want: dict[PointKey, float], timeout: float, what: str) -> None:
    """Poll the export until every point of `want` is there; fail listing what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        got = await stored(victoria)
        if all(k in got for k in want):
            return
        if time.monotonic() > deadline:
            missing = [k for k in want if k not in got]
            pytest.fail(f"{what}: {len(missing)} of {len(want)} points never arrived, e.g. {missing[:5]}")
        await asyncio.sleep(1.0)


def per_device(samples: list[Sample]) -> dict[str, int]:
    out = dict.fromkeys(DEVICES, 0)
    for s in samples:
        out[s.device] += 1
    return out


def assert_nothing_foreign(got: dict[PointKey, float], polled: list[Sample], enc: LineEncoder) -> None:
    """Every stored point is one the gateway polled, with the value it polled."""
    allowed = expected_points(polled, enc)
    foreign = [k for k in got if k not in allowed]
    assert not foreign, f"VictoriaMetrics holds points nobody polled: {foreign[:5]}"
    wrong = [k for k, v in got.items() if not same_value(v, allowed[k])]
    assert not wrong, [f"{k}: stored {got[k]!r}, polled {allowed[k]!r}" for k in wrong[:5]]


async def test_what_the_daemon_polls_comes_back_value_for_value(
    victoria: Victoria, simulated: Callable[[str, str], Site], daemon: Callable[[Site], RunningDaemon]
) -> None:
    site = simulated(victoria.url, "durable")
    d = daemon(site)
    await eventually(
        lambda: min(per_device(d.polled()).values()) >= 5, timeout=60, what="5 samples of every device"
    )
    polled = d.polled()
    enc = LineEncoder(site)
    want = expected_points(polled, enc)
    await until_stored(victoria, want, timeout=60, what="the polled samples")
    await d.shutdown()

    got, labels = await asyncio.to_thread(victoria.stored, SELECTOR)
    assert differences(got, want) == []
    assert_nothing_foreign(got, d.polled(), enc)
    # one point per sample: a line per Sample, none sharing series and timestamp (a device's reads can
    # complete within one millisecond; VictoriaMetrics then keeps them at the same ms, InfluxDB does not)
    lines = [enc.encode(s) for s in polled]
    assert None not in lines
    assert len({(ln.split(" ")[0], ln.rsplit(" ", 1)[1]) for ln in lines if ln}) == len(polled)
    # measurement per device kind, tags site/building/device/profile (and domain), nothing else
    for dev_id, building, domain, _line, _unit, profile, _extra in SIM_DEVICES:
        kind = site.profiles[profile].kind
        names = {name for (name, dev) in labels if dev == dev_id}
        assert names, f"nothing stored for {dev_id}"
        assert f"{kind}_quality" in names
        assert all(n.startswith(kind + "_") for n in names), (dev_id, kind, names)
        quantities = {n.removeprefix(kind + "_") for n in names} - {"quality"}
        assert quantities == {q for s in polled if s.device == dev_id for q in s.values}
        for name in names:
            assert labels[(name, dev_id)] == {
                "__name__": name,
                "site": "simtest",
                "building": building,
                "device": dev_id,
                "profile": profile,
                "domain": domain,
            }


@pytest.mark.parametrize("mode", ["durable", "best_effort"])
async def test_victoria_down_for_60s_while_polling_continues_loses_nothing(
    victoria: Victoria,
    simulated: Callable[[str, str], Site],
    daemon: Callable[[Site], RunningDaemon],
    mode: str,
) -> None:
    site = simulated(victoria.url, mode)
    d = daemon(site)
    await eventually(lambda: d.sink.stats.points_written > 0, timeout=60, what="a first write")

    await asyncio.to_thread(victoria.stop)
    before = len(d.polled())  # samples published before the outage began
    down_at = time.monotonic()
    await eventually(
        lambda: time.monotonic() - down_at >= OUTAGE and d.sink.stats.write_errors["unreachable"] > 0,
        timeout=OUTAGE + 60,
        what=f"{OUTAGE:.0f}s of outage noticed by the sink",
        every=0.5,
    )
    written_during_outage = d.sink.stats.points_written
    assert d.sink.buffer.stats.points > 0, "the outage's samples should be waiting in the buffer"
    await asyncio.to_thread(victoria.start)
    after = len(d.polled())  # samples published before VictoriaMetrics was back

    polled = d.polled()
    enc = LineEncoder(site)
    gap = polled[before:after]
    # polling went on for every device through the whole outage (1 s interval; generous under load)
    assert min(per_device(gap).values()) >= OUTAGE / 3, per_device(gap)
    # the sink backs off up to 30 s between retries, so the backlog may start draining that late
    await until_stored(victoria, expected_points(polled[:after], enc), timeout=120, what="the outage backlog")
    await d.shutdown()

    got = await stored(victoria)
    want_gap = expected_points(gap, enc)
    assert differences(got, want_gap) == []
    arrived = sum(1 for k in want_gap if k in got)
    assert arrived == len(want_gap), f"{len(want_gap) - arrived} points polled during the gap are lost"
    assert_nothing_foreign(got, d.polled(), enc)
    assert d.sink.stats.points_written >= written_during_outage + len(gap)
    assert sum(d.sink.buffer.stats.dropped.values()) == 0
