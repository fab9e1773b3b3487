"""MQTT ingest figures: messages per second through the gateway's real path (MqttSubscriber -> Bus -> Detector
with its engine and SQLite incident store) beside a bare paho subscriber that only does `json.loads`, on the
same real mosquitto (started by the bench on a free port) and the same messages, at QoS 0 and QoS 1.

The site: DEVICES MQTT meters (3 voltages, 3 currents, power) under the default rules, one JSON message per
meter per round, topic bench/<device>. A publisher in another process sends MESSAGES messages as fast as the
broker takes them; the consumer (this process) is timed from the first message it receives to the moment
the last one has reached the engine (the gateway) or been decoded (paho). mosquitto is configured with no
queue bound, so the figure is what the consumer keeps up with, not what the broker dropped. CPU is this
process's (all threads: paho's network thread included), in CPU-seconds over the timed span.

The rules engine the gateway runs is the one `rules` imports: to measure another version, put its `rules`
package first on PYTHONPATH (the JSON line says which file ran). Prints one human line per figure and one
JSON line with all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
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

from paho.mqtt.client import Client, MQTTMessage  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

import rules.engine  # noqa: E402
from drivers.mqtt.subscriber import MqttSubscriber  # noqa: E402
from gateway.app.mqtt import mqtt_settings  # noqa: E402
from gateway.config import load_site  # noqa: E402
from gateway.core.bus import Bus  # noqa: E402
from gateway.incidents.detector import Detector  # noqa: E402
from gateway.incidents.manager import IncidentManager  # noqa: E402
from gateway.incidents.store import IncidentStore  # noqa: E402

DEVICES = 1000
MESSAGES = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = work / "mosquitto.conf"
    # no bound on queued or in-flight messages: the bench measures the consumer, not the broker's drops
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest none\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"mosquitto did not start on port {port}")


PUBLISHER = """
import json, sys
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion
port, qos, n, devices = map(int, sys.argv[1:5])
c = Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
payloads = [
    json.dumps({"voltage_l1": 230.1 + i % 7, "voltage_l2": 229.8, "voltage_l3": 231.0, "current_l1": 4.2,
                "current_l2": 3.9, "current_l3": 4.4, "power_total": 2.87})
    for i in range(16)
]
infos = [c.publish(f"bench/d{i % devices:05d}", payloads[i % 16], qos=qos) for i in range(n)]
for info in infos[-100:]:
    info.wait_for_publish(120)
c.disconnect()
c.loop_stop()
"""


def publish(port: int, qos: int, n: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", PUBLISHER, str(port), str(qos), str(n), str(DEVICES)]
    return subprocess.Popen(args)


def site_file(work: Path, port: int, qos: int) -> Path:
    devices = "\n".join(
        f"  - {{id: d{i:05d}, building: B{i // 100:02d}, domain: B{i // 100:02d}-power, role: unit_power,"
        f" households: 1, source: mqtt, expected_interval: 60s}}"
        for i in range(DEVICES)
    )
    buildings = "\n".join(
        f"  - {{id: B{b:02d}, households: 100, domains: [{{id: B{b:02d}-power, kind: power}}]}}"
        for b in range((DEVICES + 99) // 100)
    )
    p = work / f"site-{qos}.yaml"
    p.write_text(
        f"site: {{id: bench, timezone: UTC}}\nbuildings:\n{buildings}\ndevices:\n{devices}\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  qos: {qos}\n  client_id: bench-gw-{qos}\n"
        "  subscriptions:\n    - {topic: 'bench/{device}', format: json}\n"
    )
    return p


def bare_paho(port: int, qos: int, n: int) -> dict[str, float]:
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

    c = Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{qos}", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.subscribe("bench/#", qos=qos)
    c.loop_start()
    subscribed.wait(10)
    pub = publish(port, qos, n)
    if not done.wait(300):
        raise SystemExit(f"bare paho QoS {qos}: {got} of {n} messages in 300 s (publisher exit {pub.poll()})")
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu0
    pub.wait()
    c.disconnect()
    c.loop_stop()
    return {"messages": got, "per_s": got / wall, "cpu_s": cpu, "per_cpu_s": got / cpu}


async def gateway(work: Path, port: int, qos: int, n: int) -> dict[str, float]:
    site = load_site(site_file(work, port, qos))
    settings = mqtt_settings(site)
    assert settings is not None
    bus = Bus()
    store = IncidentStore(work / f"incidents-{qos}.sqlite")
    mgr = IncidentManager.open(site, store, time.time())
    sub = bus.subscribe("rules", maxsize=10_000, overflow="block")
    detector = Detector(mgr, sub)
    subscriber = MqttSubscriber(settings, bus)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(subscriber.run(stop)), asyncio.create_task(detector.run(stop))]
    while not subscriber.subscribed:
        await asyncio.sleep(0.01)
    fed0 = mgr.engine.now
    pub = publish(port, qos, n)
    while subscriber.stats.messages == 0:
        await asyncio.sleep(0.001)
    first, cpu0 = time.perf_counter(), time.process_time()
    # done once the bus has delivered every message's sample to the detector and its queue is empty: a
    # round feeds what it took without yielding, so then every sample has reached the engine
    deadline = time.monotonic() + 300
    while sub.delivered < n or not sub.queue.empty():
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway QoS {qos}: {sub.delivered} of {n} samples in 300 s")
        await asyncio.sleep(0.002)
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu0
    got = subscriber.stats.messages
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.to_thread(pub.wait)
    assert mgr.engine.now > fed0
    return {"messages": got, "per_s": got / wall, "cpu_s": cpu, "per_cpu_s": got / cpu}


def main() -> None:
    global DEVICES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=MESSAGES)
    ap.add_argument("--devices", type=int, default=DEVICES)
    args = ap.parse_args()
    DEVICES = args.devices
    result: dict[str, Any] = {"bench": "mqtt_ingest", "devices": DEVICES, "engine": rules.engine.__file__}
    with tempfile.TemporaryDirectory(prefix="mqtt-ingest-") as tmp:
        work = Path(tmp)
        proc, port = start_broker(work)
        try:
            for qos in (0, 1):
                paho = bare_paho(port, qos, args.messages)
                gw = asyncio.run(gateway(work, port, qos, args.messages))
                ratio = gw["per_s"] / paho["per_s"]
                print(
                    f"MQTT QoS {qos}: gateway {gw['per_s']:8.0f} msg/s ({gw['per_cpu_s']:7.0f}/CPU-s), "
                    f"bare paho + json.loads {paho['per_s']:8.0f} msg/s ({paho['per_cpu_s']:7.0f}/CPU-s), "
                    f"ratio {ratio:.2f}"
                )
                result[f"qos{qos}"] = {"gateway": gw, "paho": paho, "ratio": ratio}
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
