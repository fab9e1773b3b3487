"""QoS 1 under overload, against a real mosquitto: a burst the gateway cannot take yet waits at the broker.

The subscriber acknowledges a QoS 1 message only after the bus took it, and the broker sends no more than our
receive maximum unacknowledged (MQTT 5), so a stalled consumer makes the broker keep the rest queued for our
persistent session instead of the gateway buffering without bound. Nothing is lost: not while the consumer
is held, and not when the gateway is killed holding messages it has not acknowledged (the broker delivers
them again to the next run). The broker must queue enough for the session: mosquitto_deep_queue is
configured as deploy/mosquitto/mosquitto.conf is (the default of 1000 queued messages drops the rest).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from typing import Any

import pytest
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.mqtt.settings import make_subscription
from drivers.mqtt.subscriber import MqttSubscriber
from gateway.core.bus import Bus, Subscription
from gateway.core.types import Sample
from tests.drivers.mqtt.test_subscriber import running, settings_for
from tests.fixtures.mosquitto import Mosquitto, eventually
from tests.helpers import REPO

TOPIC = "sensors/B3/B3-tank/level"
RECEIVE_MAXIMUM = 50
HELD_ROOM = 20  # the held bus subscriber's queue: the connect's SourceStatus and 19 samples


class PeakDeque(deque[Any]):
    """The subscriber's inbox, remembering the most it ever held (appended to by paho's thread)."""

    peak = 0

    def append(self, item: Any) -> None:
        super().append(item)
        self.peak = max(self.peak, len(self))


def burst(broker: Mosquitto, n: int, client_id: str = "burst-publisher", qos: int = 1) -> None:
    """Publish levels 0..n-1 as fast as the broker takes them; return when it acknowledged all (QoS 1) or
    paho wrote all to the socket (QoS 0)."""
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        for i in range(n):
            c.publish(TOPIC, str(i), qos=qos)
        assert done.wait(60), f"the broker acknowledged {acked} of {n} messages"
    finally:
        c.disconnect()
        c.loop_stop()


async def levels_from(held: Subscription, n: int) -> list[float]:
    """Drain `held` until n samples came; their levels in arrival order."""
    out: list[float] = []
    while len(out) < n:
        event = await asyncio.wait_for(held.get(), timeout=30)
        if isinstance(event, Sample):
            out.append(event.values["level"])
    return out


async def test_a_burst_the_gateway_cannot_take_waits_at_the_broker_and_arrives_whole_once(
    mosquitto_deep_queue: Mosquitto,
) -> None:
    broker = mosquitto_deep_queue
    n = 3000
    settings = settings_for(broker, receive_maximum=RECEIVE_MAXIMUM)
    bus = Bus()
    held = bus.subscribe("held-consumer", maxsize=HELD_ROOM, overflow="block")
    sub = MqttSubscriber(settings, bus)
    inbox = sub._inbox = PeakDeque()
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))
    try:
        await eventually(lambda: sub.subscribed, what="subscribed")
        await asyncio.to_thread(burst, broker, n)  # every message is at the broker now

        # The consumer is held: the bus took 19 samples (acknowledged), the 20th waits for room, and the
        # broker stopped at the receive maximum (1 being handed over + 49 buffered, none acknowledged), or,
        # where the broker sends more, the subscriber stopped reading with receive_maximum buffered.
        await eventually(lambda: len(inbox) >= RECEIVE_MAXIMUM - 1, what="the receive maximum reached")
        assert sub.acked == HELD_ROOM - 1
        assert sub.stats.messages == HELD_ROOM

        levels = await levels_from(held, n)  # release the consumer
        assert levels == [float(i) for i in range(n)]  # none lost, none twice, in order
        await eventually(lambda: sub.acked == n, what="every message acknowledged")
        assert inbox.peak <= RECEIVE_MAXIMUM  # the rest of the burst waited at the broker
        assert sub.stats.messages == n
        assert sum(sub.stats.decode_errors.values()) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    # The session owes nothing more: a message published now is the next one the gateway sees.
    async with running(settings) as again:
        await asyncio.to_thread(burst, broker, 1, "burst-publisher-2")
        assert await levels_from(again.tap, 1) == [0.0]
        assert again.subscriber.stats.messages == 1


async def test_qos0_beyond_inbox_limit_is_dropped_and_counted_while_the_bus_is_held(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    n, limit = 200, 10
    settings = settings_for(
        mosquitto,
        qos=0,
        inbox_limit=limit,
        subscriptions=(make_subscription("sensors/{building}/{device}/{quantity}", qos=0),),
    )
    caplog.set_level(logging.WARNING, logger="meterwatch.mqtt")
    bus = Bus()
    held = bus.subscribe("held-consumer", maxsize=HELD_ROOM, overflow="block")
    async with running(settings, bus=bus, tap=held) as r:
        sub = r.subscriber
        await asyncio.to_thread(burst, mosquitto, n, "burst-qos0", 0)
        # QoS 0 has no redelivery: what the held loop cannot take beyond inbox_limit is dropped on arrival.
        await eventually(lambda: sub._qos0_posted + sub._qos0_dropped == n, what="every message arrived")
        assert len(sub._inbox) <= limit
        dropped = sub._qos0_dropped
        assert dropped >= n - HELD_ROOM - limit
        levels: list[float] = []
        while True:  # release the consumer; the last sample is queued once every message was handled
            event = await asyncio.wait_for(held.get(), timeout=30)
            if isinstance(event, Sample):
                levels.append(event.values["level"])
            if sub.stats.messages == n and held.queue.empty():
                break
        assert len(levels) == n - dropped
        assert levels == sorted(levels)  # what was kept is in order
        assert sub.stats.decode_errors["inbox_full"] == dropped
        assert sub.acked == 0
    logged = [rec.getMessage() for rec in caplog.records if "QoS 0 message dropped" in rec.getMessage()]
    assert len(logged) == 1, logged


# A gateway in a process of its own, killed with SIGKILL while the bus holds it: it prints one JSON line
# when subscribed and one when it holds the receive maximum (its acknowledgements reached the broker, which
# sent as many messages more), with what the bus accepted.
CHILD = """
import asyncio, json, sys
from drivers.mqtt.settings import MqttSettings, make_subscription
from drivers.mqtt.settings import make_subscription
from drivers.mqtt.subscriber import MqttSubscriber
from gateway.core.bus import Bus
from gateway.core.types import Sample

host, client_id = sys.argv[1], sys.argv[3]
port, receive_maximum, room = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])

async def main() -> None:
    bus = Bus()
    held = bus.subscribe("held-consumer", maxsize=room, overflow="block")
    settings = MqttSettings(
        site="killtest", client_id=client_id, host=host, port=port, receive_maximum=receive_maximum,
        subscriptions=(make_subscription("sensors/{building}/{device}/{quantity}"),),
        devices={"B3-tank": "B3"},
    )
    sub = MqttSubscriber(settings, bus)
    task = asyncio.create_task(sub.run(asyncio.Event()))
    while not sub.subscribed:
        await asyncio.sleep(0.01)
    print(json.dumps({"subscribed": True}), flush=True)
    while len(sub._inbox) < receive_maximum - 1:
        await asyncio.sleep(0.01)
    accepted = [e.values["level"] for e in list(held.queue._queue) if isinstance(e, Sample)]
    print(json.dumps({"acked": sub.acked, "accepted": accepted}), flush=True)
    await task

asyncio.run(main())
"""


async def test_a_gateway_killed_before_acknowledging_gets_those_messages_again(mosquitto: Mosquitto) -> None:
    n = 300
    settings = settings_for(mosquitto, receive_maximum=RECEIVE_MAXIMUM)
    async with running(settings):
        pass  # the persistent session exists, so the broker queues for it from now on
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [mosquitto.host, str(mosquitto.port), settings.client_id, str(RECEIVE_MAXIMUM), str(HELD_ROOM)]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None

        async def line() -> dict[str, Any]:
            raw = await asyncio.wait_for(child.stdout.readline(), timeout=30)  # type: ignore[union-attr]
            assert raw, f"the gateway process ended (exit {child.returncode})"
            return dict(json.loads(raw))

        assert await line() == {"subscribed": True}
        await asyncio.to_thread(burst, mosquitto, n)
        holding = await line()
        accepted = holding["accepted"]
        assert accepted == [float(i) for i in range(HELD_ROOM - 1)]
        assert holding["acked"] == len(accepted)
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    # Everything the killed gateway had not acknowledged (the one being handed to its bus, those buffered,
    # those still at the broker) is delivered to the next run, in order. At least once: a PUBACK the broker
    # had not read when the kill reset the connection makes its message come again (those of `accepted`).
    async with running(settings) as r:
        levels: list[float] = []
        while not levels or levels[-1] != n - 1:
            event = await asyncio.wait_for(r.tap.get(), timeout=30)
            if isinstance(event, Sample):
                levels.append(event.values["level"])
        first = int(levels[0])
        assert first <= len(accepted)
        assert levels == [float(i) for i in range(first, n)]  # none lost, none twice in this run
        await eventually(lambda: r.subscriber.acked == len(levels), what="all acknowledged")


def test_read_ahead_serves_pahos_small_reads_from_one_kernel_read() -> None:
    import socket

    from drivers.mqtt.subscriber import _ReadAhead

    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello\x30\x03abc")  # two packets: type byte, length byte, body
        sock = _ReadAhead(a)
        assert sock.recv(1) == b"\x30"  # one kernel read took both packets
        assert sock.pending() == 11
        assert (sock.recv(1), sock.recv(5)) == (b"\x05", b"hello")
        assert (sock.recv(1), sock.recv(1), sock.recv(10)) == (b"\x30", b"\x03", b"abc")
        assert sock.pending() == 0  # paho waits in select again
        assert sock.fileno() == a.fileno()  # select and close reach the real socket
        b.close()
        assert sock.recv(1) == b""  # the peer closed: paho sees it as before
    finally:
        a.close()
