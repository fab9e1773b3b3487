"""MQTT ingest figures: how fast the gateway's real path (MqttSubscriber -> Bus -> Detector with its engine
and SQLite incident store) drains a broker, beside a bare paho subscriber that only does `json.loads`, on the
same real mosquitto (started by the bench on a free port) and the same messages, at QoS 0 and QoS 1.

Fair to the baseline: neither consumer waits for a publisher. Before the timed drains the whole burst is
preloaded into the consumer's persistent session while it is offline (its client id subscribed once with a
session expiry, then disconnected; PUBLISHERS publisher processes at QoS 1, each waiting for every PUBACK),
so the broker holds MESSAGES messages for it (one burst, copied by the broker into the sessions of every run
of both consumers). The consumer then connects and is timed from its first message to the moment the last
one has reached the engine (the gateway) or been decoded (paho). mosquitto runs with no queue bound and
`queue_qos0_messages true`, so the QoS 0 burst is queued too and nothing is dropped. Both consumers speak
MQTT 5; the gateway announces its receive maximum (1000 in flight unacknowledged), paho none.

The site: DEVICES MQTT meters (3 voltages, 3 currents, power) under the default rules, one JSON message per
meter per round, topic bench/<device>. Each figure is the median of REPEATS runs; the runs of the two
consumers alternate, so a noisy neighbour on the machine slows both. CPU is this process's (all threads:
paho's network thread included), in CPU-seconds over the timed span. The ratio is taken per CPU-second
(messages a second at one core, as issue 11 states its goal), which other work on a shared machine changes
far less than messages per wall-clock second (printed beside it, and in the JSON line as ratio_wall).

The code measured is the one `drivers` and `rules` import: to measure another version (the subscriber before
a change), put its tree first on PYTHONPATH (the JSON line names the files that ran). Prints one human line
per QoS and one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# run as `python bench/mqtt_ingest.py`, this file's folder comes first on sys.path and bench/rules.py
# would hide the `rules` package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.modules.pop("rules", None)
# the repo root, last (a tree put first on PYTHONPATH still wins): for bench.broker
sys.path.append(str(_HERE.parent))

from paho.mqtt.client import Client, MQTTMessage  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

import drivers.mqtt.subscriber  # noqa: E402
import rules.engine  # noqa: E402
from bench import broker  # noqa: E402
from drivers.mqtt.subscriber import MqttSubscriber  # noqa: E402
from gateway.app.mqtt import mqtt_settings  # noqa: E402
from gateway.config import load_site  # noqa: E402
from gateway.core.bus import Bus  # noqa: E402
from gateway.incidents.detector import Detector  # noqa: E402
from gateway.incidents.manager import IncidentManager  # noqa: E402
from gateway.incidents.store import IncidentStore  # noqa: E402

DEVICES = 1000
MESSAGES = 20_000
REPEATS = 3
PUBLISHERS = 2
TOPIC_FILTER = "bench/+"  # what the gateway subscribes for `bench/{device}`; the paho baseline takes the same


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    # no bound on queued or in-flight messages, QoS 0 queued for offline sessions too: the bench measures
    # the consumer, never the broker's drops
    return broker.start_broker(
        work,
        "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\nqueue_qos0_messages true\n",
    )


PUBLISHER = """
import json, sys
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion
port, first, n, devices = map(int, sys.argv[1:5])
name = sys.argv[5]
c = Client(CallbackAPIVersion.VERSION2, client_id=name)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
payloads = [
    json.dumps({"voltage_l1": 230.1 + i % 7, "voltage_l2": 229.8, "voltage_l3": 231.0, "current_l1": 4.2,
                "current_l2": 3.9, "current_l3": 4.4, "power_total": 2.87})
    for i in range(16)
]
infos = [c.publish(f"bench/d{i % devices:05d}", payloads[i % 16], qos=1) for i in range(first, first + n)]
for info in infos:
    info.wait_for_publish(120)
    if not info.is_published():
        sys.exit(f"{name}: message {info.mid} not acknowledged by the broker")
c.disconnect()
c.loop_stop()
"""


def make_session(port: int, client_id: str, qos: int) -> None:
    """The consumer's persistent session with its subscription, left offline so the broker queues for it."""
    c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe(TOPIC_FILTER, qos=qos)
    if not subscribed.wait(10):
        raise SystemExit(f"session {client_id}: no SUBACK")
    c.disconnect()
    c.loop_stop()


def preload(port: int, client_ids: list[str], qos: int, n: int) -> None:
    """Queue n messages for each offline session (PUBLISHERS processes, every PUBACK awaited): the broker
    copies each message into every session, so one burst serves every run of both consumers."""
    for client_id in client_ids:
        make_session(port, client_id, qos)
    share = -(-n // PUBLISHERS)
    procs = []
    for k, first in enumerate(range(0, n, share)):
        args = [str(port), str(first), str(min(share, n - first)), str(DEVICES), f"bench-pub-{k}"]
        procs.append(subprocess.Popen([sys.executable, "-c", PUBLISHER, *args]))
    for p in procs:
        if p.wait(300) != 0:
            raise SystemExit(f"a publisher exited with {p.returncode}")


def site_file(work: Path, port: int, qos: int, client_id: str) -> Path:
    devices = "\n".join(
        f"  - {{id: d{i:05d}, building: B{i // 100:02d}, domain: B{i // 100:02d}-power, role: unit_power,"
        f" households: 1, source: mqtt, expected_interval: 60s}}"
        for i in range(DEVICES)
    )
    buildings = "\n".join(
        f"  - {{id: B{b:02d}, households: 100, domains: [{{id: B{b:02d}-power, kind: power}}]}}"
        for b in range((DEVICES + 99) // 100)
    )
    p = work / f"site-{client_id}.yaml"
    p.write_text(
        f"site: {{id: bench, timezone: UTC}}\nbuildings:\n{buildings}\ndevices:\n{devices}\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  qos: {qos}\n  client_id: {client_id}\n"
        "  subscriptions:\n    - {topic: 'bench/{device}', format: json}\n"
    )
    return p


def bare_paho(port: int, qos: int, n: int, client_id: str) -> dict[str, float]:
    done = threading.Event()
    got = 0
    first = 0.0
    cpu0 = 0.0

    def on_message(client: Client, userdata: object, msg: MQTTMessage) -> None:
        nonlocal got, first, cpu0
        if got == 0:
            first, cpu0 = time.perf_counter(), time.process_time()
        json.loads(msg.payload)
        got += 1
        if got >= n:
            done.set()

    c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    if not done.wait(300):
        raise SystemExit(f"bare paho QoS {qos}: {got} of {n} queued messages in 300 s")
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    return {"messages": got, "per_s": got / wall, "cpu_s": cpu, "per_cpu_s": got / cpu}


async def gateway(work: Path, port: int, qos: int, n: int, client_id: str) -> dict[str, float]:
    site = load_site(site_file(work, port, qos, client_id))
    settings = mqtt_settings(site)
    assert settings is not None
    bus = Bus()
    store = IncidentStore(work / f"incidents-{client_id}.sqlite")
    mgr = IncidentManager.open(site, store, time.time())
    sub = bus.subscribe("rules", maxsize=10_000, overflow="block")
    detector = Detector(mgr, sub)
    subscriber = MqttSubscriber(settings, bus)
    stop = asyncio.Event()
    fed0 = mgr.engine.now
    tasks = [asyncio.create_task(subscriber.run(stop)), asyncio.create_task(detector.run(stop))]
    deadline = time.monotonic() + 300
    while subscriber.stats.messages == 0:
        if time.monotonic() > deadline or any(t.done() for t in tasks):
            raise SystemExit(f"gateway QoS {qos}: no message from the preloaded session")
        await asyncio.sleep(0.001)
    first, cpu0 = time.perf_counter(), time.process_time()
    # done once every message was handled, the bus has delivered every event published (samples and the
    # source's status) to the detector and its queue is empty: a round feeds what it took without yielding,
    # so then every sample has reached the engine
    while subscriber.stats.messages < n or sub.delivered < bus.published or not sub.queue.empty():
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway QoS {qos}: {sub.delivered} of {n} samples in 300 s")
        await asyncio.sleep(0.002)
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu0
    got = subscriber.stats.messages
    stop.set()
    await asyncio.gather(*tasks)
    assert mgr.engine.now > fed0
    store.close()
    errors = dict(subscriber.stats.decode_errors)
    if got != n or errors:
        raise SystemExit(f"gateway QoS {qos}: {got} messages for {n}, errors {errors}")
    return {"messages": got, "per_s": got / wall, "cpu_s": cpu, "per_cpu_s": got / cpu}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    global DEVICES, PUBLISHERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=MESSAGES, help="messages in each preloaded burst")
    ap.add_argument("--devices", type=int, default=DEVICES)
    ap.add_argument("--repeats", type=int, default=REPEATS, help="runs of each consumer; the median is shown")
    ap.add_argument("--publishers", type=int, default=PUBLISHERS, help="publisher processes for a preload")
    args = ap.parse_args()
    DEVICES, PUBLISHERS = args.devices, args.publishers
    result: dict[str, Any] = {
        "bench": "mqtt_ingest",
        "devices": DEVICES,
        "messages": args.messages,
        "repeats": args.repeats,
        "subscriber": drivers.mqtt.subscriber.__file__,
        "engine": rules.engine.__file__,
    }
    with tempfile.TemporaryDirectory(prefix="mqtt-ingest-") as tmp:
        work = Path(tmp)
        proc, port = start_broker(work)
        try:
            for qos in (0, 1):
                runs = range(args.repeats)
                preload(
                    port,
                    [f"bench-{who}-{qos}-{k}" for k in runs for who in ("paho", "gw")],
                    qos,
                    args.messages,
                )
                paho_runs, gw_runs = [], []
                for k in runs:
                    paho_runs.append(bare_paho(port, qos, args.messages, f"bench-paho-{qos}-{k}"))
                    gw_runs.append(
                        asyncio.run(gateway(work, port, qos, args.messages, f"bench-gw-{qos}-{k}"))
                    )
                paho, gw = median_of(paho_runs), median_of(gw_runs)
                ratio = gw["per_cpu_s"] / paho["per_cpu_s"]
                ratio_wall = gw["per_s"] / paho["per_s"]
                print(
                    f"MQTT QoS {qos} (drain of {args.messages} preloaded, median of {args.repeats}): "
                    f"gateway {gw['per_cpu_s']:6.0f} msg/CPU-s ({gw['per_s']:6.0f} msg/s), "
                    f"bare paho + json.loads {paho['per_cpu_s']:6.0f} msg/CPU-s "
                    f"({paho['per_s']:6.0f} msg/s), "
                    f"ratio {ratio:.2f} per CPU-s ({ratio_wall:.2f} per s)",
                    flush=True,
                )
                result[f"qos{qos}"] = {
                    "gateway": gw,
                    "paho": paho,
                    "ratio": ratio,
                    "ratio_wall": ratio_wall,
                    "gateway_runs": [r["per_cpu_s"] for r in gw_runs],
                    "paho_runs": [r["per_cpu_s"] for r in paho_runs],
                }
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
