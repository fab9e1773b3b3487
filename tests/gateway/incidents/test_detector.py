"""The live detector component on its own: bus -> engine -> store, with a clock the test controls.

A failed store write loses nothing (the changes are kept and written by the next round); a stop drains the
queue, stores what it held and records a clean stop; incident transitions are logged as structured lines.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from gateway.core.bus import Bus
from gateway.core.types import Sample
from gateway.incidents.detector import Detector
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch, IncidentStore, StoreReader
from tests.gateway.incidents.test_store import SITE, T0, volts


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path) -> tuple[Bus, Detector, IncidentStore, Clock]:
    from gateway.config import load_site

    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    site = load_site(path)
    store = IncidentStore(tmp_path / "incidents.sqlite")
    mgr = IncidentManager.open(site, store, T0)
    bus = Bus()
    sub = bus.subscribe("rules", maxsize=100, overflow="block")
    clock = Clock(T0)
    return bus, Detector(mgr, sub, clock=clock), store, clock


async def send(bus: Bus, clock: Clock, until: float, b1: float) -> None:
    """Both main meters report every 0.5 s up to `until` (B1 at `b1` volts); the clock follows."""
    while clock.t < until:
        clock.t = round(clock.t + 0.5, 3)
        await bus.publish(volts("B1-main", clock.t, b1))
        await bus.publish(volts("B2-main", clock.t, 230.0))


async def test_a_failed_write_is_kept_and_written_by_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bus, det, store, clock = make(tmp_path)
    reader = StoreReader(store.path)
    real_write = store.write
    calls = {"n": 0}

    def flaky(batch: Batch) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real_write(batch)

    monkeypatch.setattr(store, "write", flaky)
    caplog.set_level(logging.INFO, logger="meterwatch.incidents")
    await send(bus, clock, T0 + 2, 230.0)
    await send(bus, clock, T0 + 6, 0.0)
    await det.round()  # feeds everything queued, the outage fires and opens; the write fails
    [inc] = list(det.mgr.engine.incidents.values())
    assert det.write_failures == 1
    assert reader.incidents("all") == []
    assert det.mgr.open_incidents() == []  # readers see only what is committed
    assert any("cannot write to the incident store" in r.getMessage() for r in caplog.records)

    clock.t += 0.2  # the retry waits its back-off (1 s): this round writes nothing
    await bus.publish(volts("B2-main", clock.t, 230.0))
    await det.round()
    assert calls["n"] == 1
    clock.t += 1.0
    await bus.publish(volts("B2-main", clock.t, 230.0))
    await det.round()
    assert calls["n"] == 2
    [stored] = reader.incidents("open")
    assert stored.id == inc.id and stored.scope == "domain:B1-power"
    assert [e.event for e in reader.timeline(inc.id)] == ["opened"]
    assert [(c.old, c.new) for c in reader.alert_log()] == [("inactive", "pending"), ("pending", "firing")]
    assert [i.id for i in det.mgr.open_incidents()] == [inc.id]

    opened = [r for r in caplog.records if r.getMessage() == "incident opened"]
    assert len(opened) == 1
    assert opened[0].levelno == logging.WARNING  # seen even at --log-level warning (the demo's)
    fields = opened[0].fields  # type: ignore[attr-defined]
    assert (fields["id"], fields["category"], fields["scope"]) == (inc.id, "power_outage", "domain:B1-power")
    store.close()


async def test_stop_drains_the_queue_and_records_a_clean_stop(tmp_path: Path) -> None:
    bus, det, store, clock = make(tmp_path)
    stop = asyncio.Event()
    await send(bus, clock, T0 + 2, 230.0)
    await send(bus, clock, T0 + 6, 0.0)
    stop.set()
    await det.run(stop)  # stop is already set: only the final drain runs
    assert det.sub.queue.empty()
    [inc] = StoreReader(store.path).incidents("open")
    assert inc.scope == "domain:B1-power"
    store.close()

    again = IncidentStore(store.path)
    loaded = again.load()
    assert loaded.clean_stop and loaded.last_heartbeat == clock.t
    assert [i.id for i in loaded.incidents] == [inc.id]
    again.close()


async def test_a_blocking_subscriber_never_drops(tmp_path: Path) -> None:
    bus, det, store, _clock = make(tmp_path)
    stop = asyncio.Event()
    runner = asyncio.create_task(det.run(stop))
    # far more events than the queue holds (100): the publisher waits, nothing is dropped
    for i in range(1, 401):
        await bus.publish(Sample("B2-main", T0 + i * 0.01, {"voltage_l1": 230.0}))
    deadline = asyncio.get_running_loop().time() + 30
    while not det.sub.queue.empty():
        assert asyncio.get_running_loop().time() < deadline, "the detector did not drain its queue"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(runner, 30)
    assert det.sub.dropped == 0 and det.sub.delivered == 400
    assert det.mgr.engine.last_seen["B2-main"] == pytest.approx(T0 + 4.0)
    store.close()
