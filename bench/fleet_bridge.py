"""The fleet bridge's cost on the gateway (issue 13, acceptance): CPU seconds of this process per incident
transition sent to the broker, through the real path: the detector hook (gateway/fleet/bridge.py) adds the
transition's messages to the round's batch, the incident store commits them with the round, the publisher
(gateway/fleet/publisher.py, paho MQTT 5, QoS 1) sends them to a local mosquitto and deletes each row on
its PUBACK.

Each round carries one transition of one of 50 open incidents, so each transition owes two messages: the
event and the incident's retained state. The baseline is the same rounds written to the same kind of store
without the bridge (the incident row and its timeline line: what detection costs anyway); the bridge's
cost per transition is the difference, CPU of every thread of the process (hook, SQLite, the publisher's
thread, paho's thread) over the transitions, timed from the first round to the last PUBACK.

    .venv/bin/python -m bench.fleet_bridge [--events N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.broker import free_port as free_port  # bench/fleet_view.py imports it from here
from bench.broker import start_broker
from gateway.config import load_site
from gateway.fleet.bridge import FleetBridge
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch, IncidentStore
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState

INCIDENTS = 50
SITE = """\
site: {{id: bench, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
fleet: {{company: acme, broker: "mqtt://127.0.0.1:{port}", gateway: gw-bench, heartbeat: 30s}}
"""


def incident(i: int, now: float) -> Incident:
    return Incident(
        id=i, key=f"power_outage/domain:B1-power-{i}", category="power_outage", scope="building:B1",
        title=f"power outage {i}", severity="critical", event_code="003", audiences=["staff"],
        households=10, state=IncidentState.FIRING, opened_at=now, first_evidence_at=now, updated_at=now,
        symptoms={"B1-main": ["power.outage"]},
    )  # fmt: skip


def rounds(store: IncidentStore, n: int, hook: Any) -> None:
    """`n` rounds of one transition each (a note on one of the open incidents), each committed."""
    now = time.time()
    incidents = [incident(i + 1, now) for i in range(INCIDENTS)]
    for k in range(n):
        inc = incidents[k % INCIDENTS]
        t = time.time()
        batch = Batch(
            incidents={inc.id: inc},
            timeline=[IncidentChange(t, inc.id, IncidentEvent.NOTE, False, f"note {k}")],
        )
        if hook is not None:
            hook.on_batch(batch, t)
        store.write(batch)
        if hook is not None:
            hook.wake()


class _Hook:
    def __init__(self, bridge: FleetBridge, publisher: FleetPublisher) -> None:
        self.on_batch = bridge.on_batch
        self.wake = publisher.wake


def baseline(work: Path, n: int) -> float:
    store = IncidentStore(work / "baseline.sqlite")
    c0 = time.process_time()
    rounds(store, n, None)
    return time.process_time() - c0


def bridged(work: Path, n: int, port: int, timeout: float) -> dict[str, Any]:
    site_path = work / "site.yaml"
    site_path.write_text(SITE.format(port=port), encoding="utf-8")
    site = load_site(site_path)
    assert site.config.fleet is not None
    store_path = work / "incidents.sqlite"
    store = IncidentStore(store_path)
    mgr = IncidentManager.open(site, store, time.time())
    bridge = FleetBridge(site, site.config.fleet, mgr, store_path, time.time())
    publisher = FleetPublisher(site, site.config.fleet, bridge, dict, "bench")
    first = Batch()  # the detector's first round: no open incident, so no snapshot is owed
    bridge.on_batch(first, time.time())
    store.write(first)
    publisher.start()
    deadline = time.monotonic() + 30
    while not publisher.stats.connected:
        if time.monotonic() > deadline:
            raise SystemExit("the publisher did not connect")
        time.sleep(0.01)
    wall0, c0 = time.monotonic(), time.process_time()
    rounds(store, n, _Hook(bridge, publisher))
    messages = 2 * n  # each transition: its event and the incident's retained state
    deadline = time.monotonic() + timeout
    while publisher.stats.acked < messages:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {publisher.stats.acked} of {messages} acknowledged in {timeout}s")
        time.sleep(0.005)  # polling the counter: the bench waits for the last PUBACK, it adds no work
    cpu, wall = time.process_time() - c0, time.monotonic() - wall0
    stats = publisher.stats
    publisher.stop(5.0)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "messages": messages,
        "acked": stats.acked,
        "published": stats.published,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2000, help="incident transitions (default 2000)")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    n = args.events
    with tempfile.TemporaryDirectory(prefix="mw-fleet-bench-") as tmp:
        work = Path(tmp)
        proc, port = start_broker(work)
        try:
            base = baseline(work, n)
            r = bridged(work, n, port, args.timeout)
        finally:
            proc.terminate()
            proc.wait(10)
    per_event = (r["cpu_s"] - base) / n
    load = os.getloadavg()[0]
    out = {
        "bench": "fleet_bridge",
        "events": n,
        "messages": r["messages"],
        "acked": r["acked"],
        "cpu_per_event_us": round(per_event * 1e6, 1),
        "cpu_per_event_total_us": round(r["cpu_s"] / n * 1e6, 1),
        "baseline_cpu_per_round_us": round(base / n * 1e6, 1),
        "events_per_s": round(n / r["wall_s"], 1),
        "wall_s": round(r["wall_s"], 3),
        "load_1m": round(load, 2),
    }
    print(
        f"fleet bridge, {n} incident transitions ({r['messages']} QoS 1 messages, all acknowledged) to a "
        f"local mosquitto: {out['cpu_per_event_us']} us CPU per transition for the bridge (hook, outbox rows "
        f"in the round's commit, publish, PUBACK delete), over a round's own store write of "
        f"{out['baseline_cpu_per_round_us']} us; {out['events_per_s']} transitions/s end to end "
        f"(load {out['load_1m']})"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
