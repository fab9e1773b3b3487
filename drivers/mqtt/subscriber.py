"""The MQTT source: a paho-mqtt 2.x client whose network thread hands every message to the asyncio loop.

Delivery contract (at least once, across reconnects and restarts):
- fixed client id and a persistent session, QoS 1 by default: the broker keeps our subscriptions and queues
  messages while the gateway is away;
- another client with our client id takes that session on each of its reconnects and we take it back on ours:
  such a takeover (drivers/mqtt/takeover.py) is said in one line naming the client id, then counted
  (MqttStats.takeovers); it is no lost broker, so it reports no lost source unless the link then stays down;
- manual acknowledgement: a QoS>0 message is acknowledged only after its Sample was accepted by the bus, so a
  crash before that makes the broker deliver it again;
- reconnect with a back-off capped at `reconnect_max`, resubscribe on every connect, and a watchdog that
  reconnects a link that claims to be up but has carried nothing for `silence_timeout`;
- a bad message is counted by cause, logged once per cause, acknowledged and skipped; a payload over
  max_payload is cut to max_payload + 1 bytes on arrival and dropped unread (see drivers/mqtt/router.py for
  the other bounds), so no message can hold the event loop for long.

Threads and batching: paho's network thread only copies each message into a shared buffer (a deque) and
wakes the event loop once when the buffer goes from idle to busy (one `call_soon_threadsafe` per batch, not
per message: each costs a self-pipe write and a loop wake-up). The consumer on the loop then takes everything
buffered, in arrival order, in turns of at most BATCH messages: decoding, stats, logging and bus publishing
happen there, and the QoS 1 acknowledgements of a turn go to paho as one write of all their PUBACKs, after
the bus accepted every message they acknowledge. Decoding stays on the loop: under the GIL it cannot run in
parallel anyway, and moved to paho's thread it cost more (an A/B of hand-off, routing, bus and engine without
network, three runs each: 12-19k messages per CPU-second on paho's thread, 15-21k on the loop); on the loop
the router, the counters and the once-per-cause log need no lock.

Bounds: QoS>0 messages waiting for the loop are at most `receive_maximum`. We announce it to an MQTT 5
broker, which then sends no more unacknowledged; and since a broker may not keep to it (mosquitto 2.0.11,
Debian 12's, sends its whole queue once the first PUBACK comes back) or cannot be told (MQTT 3.1.1), paho's
thread also stops reading from the socket while that many wait, until the loop has taken half of them. The
rest of a burst then stays at the broker, unacknowledged, for our persistent session (size its queue:
deploy/mosquitto/mosquitto.conf). QoS 0 messages waiting for the loop are at most `inbox_limit`, beyond which
they are dropped and counted (inbox_full): QoS 0 has no redelivery, so holding the socket would not save them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MessageType, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.mqtt.errors import short
from drivers.mqtt.router import Router
from drivers.mqtt.settings import MqttSettings
from drivers.mqtt.takeover import TakeoverWatch
from gateway.core.bus import Bus
from gateway.core.once import OnceLog
from gateway.core.stats import MqttStats
from gateway.core.types import SourceStatus

log = logging.getLogger("meterwatch.mqtt")

# Messages the consumer handles in one turn before it acknowledges them and lets other tasks run: large
# enough that the per-turn costs (one PUBACK write, one loop turn) vanish, small enough that a turn holds
# the loop for tens of milliseconds at most.
BATCH = 256


class _Inbound(NamedTuple):  # a tuple: made once per message on the paho thread, the cheapest to build
    topic: str
    payload: bytes  # at most max_payload + 1 bytes: a larger one is cut on arrival and dropped unread
    size: int  # the payload's length as received
    qos: int
    mid: int
    retain: bool
    dup: bool
    received: float
    generation: int  # which connection delivered it


@dataclass(frozen=True, slots=True)
class _Link:
    connected: bool
    reason: str
    at: float  # monotonic time of the change, taken on the paho thread
    session_present: bool = False
    code: int = 0  # the disconnect's reason code (MQTT 5 values; paho maps 3.1.1 losses onto them)
    from_server: bool = False  # the broker sent a DISCONNECT (MQTT 5)


@dataclass(frozen=True, slots=True)
class _Refused:
    """The broker refused one of our subscriptions (e.g. an ACL)."""

    topic: str
    reason: str


_Item = _Inbound | _Link | _Refused


class MqttSubscriber:
    """A Component: `await run(stop)` until `stop` is set."""

    def __init__(
        self,
        settings: MqttSettings,
        bus: Bus,
        stats: MqttStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = f"mqtt:{settings.host}:{settings.port}"
        self.bus = bus
        self.stats = stats or MqttStats(source=settings.source)
        self.clock = clock
        self.router = Router(
            settings.subscriptions,
            settings.devices,
            ZoneInfo(settings.timezone),
            max_payload=settings.max_payload,
            max_values=settings.max_values,
            max_quantities=settings.max_quantities,
            max_depth=settings.max_depth,
        )
        self.once = OnceLog(log)
        self.acked = 0  # QoS>0 messages acknowledged to the broker (for tests and benches)
        self.watchdog_reconnects = 0
        self.watchdog_checks = 0
        # Written by the paho thread, read by the loop (plain attribute stores are atomic under the GIL).
        self._generation = 0
        self._subscribed_generation = -1
        self._link_up = False
        self._client: Client | None = None
        self._last_activity = time.monotonic()
        # Loop-thread state.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The hand-off: the paho thread appends, the consumer on the loop pops (deque operations are atomic).
        self._inbox: deque[_Item] = deque()
        # Set by the paho thread when it schedules a wake-up of the loop, cleared by the consumer before it
        # drains the inbox: anything appended after the clear finds it False and schedules a wake-up.
        self._wake_scheduled = False
        self._ready: asyncio.Event | None = None
        # QoS 0 messages appended (paho thread) and taken (loop): each counter has one writer, so no lock.
        self._qos0_posted = 0
        self._qos0_taken = 0
        # QoS>0 messages appended and taken, likewise; paho's thread waits on `_room` while receive_maximum
        # of them wait for the loop (it stops reading the socket: the broker keeps the rest).
        self._acked_posted = 0
        self._acked_taken = 0
        self._room = threading.Event()
        self._room.set()
        self._releasing = False  # stopping or restarting the link: paho's thread must not wait for room
        self.room_waits = 0  # times paho's thread stopped reading for want of room (for tests and benches)
        self._qos0_dropped = 0  # paho thread: dropped because inbox_limit were waiting
        self._qos0_dropped_seen = 0  # loop: how many of those were counted and logged
        self._to_ack: list[_Inbound] = []  # QoS>0 messages the bus accepted, acknowledged at the turn's end
        self._published_unacked: set[int] = set()
        self._reported: bool | None = None  # connection state last published as SourceStatus
        self._ever_connected = False
        self._down_logged = True  # the last link loss was logged, so the reconnect is logged too
        self.takeover = TakeoverWatch(short_link=settings.takeover_window)
        self._held_loss: _Link | None = None  # a takeover's disconnect, reported only if it lasts
        self._filters = _filters(settings)

    @property
    def subscribed(self) -> bool:
        """Connected and the broker has answered our subscriptions on this connection."""
        return self._link_up and self._subscribed_generation == self._generation

    # ------------------------------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox.clear()
        self._wake_scheduled = False
        self._ready = asyncio.Event()
        self._qos0_posted = self._qos0_taken = self._acked_posted = self._acked_taken = 0
        self._room.set()
        client = self._client = self._make_client()
        self._start(client)
        consumer = asyncio.create_task(self._consume(client), name=f"{self.name}:consume")
        try:
            await self._watch(client, stop, consumer)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await self._shutdown(client)

    def _make_client(self) -> Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else s.clean_start,
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            client.tls_set(
                ca_certs=s.tls.ca_file,
                certfile=s.tls.cert_file,
                keyfile=s.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(s.tls.insecure)
        client.will_set(s.status_topic, "offline", qos=1, retain=True)
        # paho's default ceiling is 120 s (older releases: 10 min); ours is capped at 30 s by the config.
        client.reconnect_delay_set(
            min_delay=max(1, math.ceil(s.reconnect_min)), max_delay=max(1, math.ceil(s.reconnect_max))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _start(self, client: Client) -> None:
        s = self.settings
        self._releasing = False
        props: Properties | None = None
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if s.clean_start else s.session_expiry
            props.ReceiveMaximum = s.receive_maximum
            client.connect_async(s.host, s.port, s.keepalive, clean_start=s.clean_start, properties=props)
        else:
            client.connect_async(s.host, s.port, s.keepalive)
        self._last_activity = time.monotonic()
        client.loop_start()

    async def _watch(self, client: Client, stop: asyncio.Event, consumer: asyncio.Task[None]) -> None:
        tick = min(1.0, self.settings.silence_timeout / 4)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)
            if consumer.done():
                consumer.result()  # a bug in the consumer must surface, not leave a silent source
            self.watchdog_checks += 1
            await self._settle(time.monotonic())
            if not stop.is_set() and self._silent_too_long():
                await self._restart_link(client)

    async def _settle(self, now: float) -> None:
        """A link that stays up ends a flapping or takeover episode; one that stays down is lost after all."""
        s = self.settings
        up_since = self.takeover.connected_at
        if up_since is not None and now - up_since >= s.takeover_window:
            self.once.forget(("connect",))
            if self.takeover.stable(now):
                self.once.forget(("takeover",))
                log.info(
                    "mqtt session kept for %.0f s: the other client with our id is gone",
                    now - up_since,
                    extra={"fields": {"client_id": s.client_id}},
                )
        held = self._held_loss
        if held is not None and now - held.at >= self._loss_grace():
            self._held_loss = None
            if self._reported is not False:
                self._reported = False
                await self.bus.publish(self._source_status(False, f"{held.reason}; not reconnected since"))

    def _loss_grace(self) -> float:
        """How long a takeover's disconnect may last before it counts as a lost link: its reconnect is due
        after paho's back-off (reconnect_min, doubling while it fails, up to reconnect_max)."""
        return max(10.0, 2 * self.settings.reconnect_max)

    def _silent_too_long(self) -> bool:
        if not self.settings.devices or not self._link_up:
            return False
        return time.monotonic() - self._last_activity > self.settings.silence_timeout

    async def _restart_link(self, client: Client) -> None:
        self.watchdog_reconnects += 1
        self.once.warn(
            ("silence",),
            "mqtt link up but no message for %.0fs while %d device(s) are expected; reconnecting",
            self.settings.silence_timeout,
            len(self.settings.devices),
        )
        client.disconnect()
        self._release_paho_thread()
        await asyncio.to_thread(client.loop_stop)
        self._start(client)

    async def _shutdown(self, client: Client) -> None:
        if self._link_up:
            # A clean DISCONNECT does not fire the will, so say "offline" ourselves.
            info = client.publish(self.settings.status_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(ValueError, RuntimeError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        self._release_paho_thread()
        await asyncio.to_thread(client.loop_stop)
        self._link_up = False
        self.stats.connected = False
        if self._reported is not False:
            self._reported = False
            self.bus.publish_nowait(self._source_status(False, "stopped"))
        log.info("mqtt subscriber stopped", extra={"fields": {"client_id": self.settings.client_id}})

    def _release_paho_thread(self) -> None:
        """Before joining paho's thread: it must not stay waiting for room that a stalled bus never makes."""
        self._releasing = True
        self._room.set()

    # ------------------------------------------------------------------------- paho thread (callbacks)
    # Never raise here: an exception would end paho's network thread.

    def _post(self, item: _Item) -> None:
        self._inbox.append(item)
        if self._wake_scheduled:
            return  # a wake-up is on its way and the consumer has not started draining yet
        loop = self._loop
        if loop is None:
            return
        self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: the message stays unacknowledged
            loop.call_soon_threadsafe(self._wake)

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._post(_Link(False, f"connection refused: {reason_code}", time.monotonic()))
                return
            sock = getattr(client, "_sock", None)
            if sock is not None and not isinstance(sock, _ReadAhead):
                client._sock = _ReadAhead(sock)  # CONNACK was the last byte read: a packet boundary
            self._generation += 1
            self._link_up = True
            self._last_activity = time.monotonic()
            if self._filters:
                if self.settings.protocol == "5":
                    # Retained messages only for a new subscription: a resumed session already had them.
                    client.subscribe(
                        [
                            (
                                f,
                                SubscribeOptions(
                                    qos=q, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                                ),
                            )
                            for f, q in self._filters
                        ]
                    )
                else:
                    client.subscribe(list(self._filters))
            else:
                self._subscribed_generation = self._generation
            client.publish(self.settings.status_topic, "online", qos=1, retain=True)
            self._post(_Link(True, "connected", time.monotonic(), bool(flags.session_present)))
        except Exception:  # pragma: no cover - defensive: keep the network thread alive
            log.exception("mqtt on_connect failed")

    def _on_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._link_up = False
        self._post(
            _Link(
                False,
                f"disconnected: {reason_code}",
                time.monotonic(),
                code=int(reason_code.value),
                from_server=bool(flags.is_disconnect_packet_from_server),
            )
        )

    def _on_connect_fail(self, client: Client, userdata: object) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        self._post(_Link(False, f"cannot connect to {where}", time.monotonic()))

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for (topic, _), rc in zip(self._filters, reason_codes, strict=False):
            if rc.is_failure:
                self._post(_Refused(topic, str(rc)))
        self._subscribed_generation = self._generation

    def _on_message(self, client: Client, userdata: object, msg: MQTTMessage) -> None:
        try:
            self._last_activity = time.monotonic()
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = "<topic is not UTF-8>"
            payload = msg.payload
            size = len(payload)
            if size > self.settings.max_payload:  # only the length matters: keep no megabytes queued
                payload = payload[: self.settings.max_payload + 1]
            qos = msg.qos
            if qos == 0:
                # QoS 0 has no broker-side flow control: bound what waits for a busy loop or a blocked bus.
                if self._qos0_posted - self._qos0_taken >= self.settings.inbox_limit:
                    self._qos0_dropped += 1
                    return
                self._qos0_posted += 1
            else:
                self._acked_posted += 1
            self._post(
                _Inbound(
                    topic,
                    bytes(payload),
                    size,
                    qos,
                    msg.mid,
                    bool(msg.retain),
                    bool(msg.dup),
                    self.clock(),
                    self._generation,
                )
            )
            if qos and self._acked_posted - self._acked_taken >= self.settings.receive_maximum:
                self._wait_for_room()
        except Exception:  # pragma: no cover - defensive: keep the network thread alive
            log.exception("mqtt on_message failed")

    def _wait_for_room(self) -> None:
        """Hold paho's network thread (no socket reads) until the loop took half of the waiting messages."""
        self.room_waits += 1
        self._room.clear()
        # Checked after the clear: the loop counts what it takes before it looks at `_room`, so either it sees
        # the clear and sets `_room`, or this sees its count. The timeout only re-checks `_releasing`.
        while self._acked_posted - self._acked_taken >= self.settings.receive_maximum and not self._releasing:
            self._room.wait(1.0)

    # ------------------------------------------------------------------------------- event loop side

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    async def _consume(self, client: Client) -> None:
        assert self._ready is not None
        inbox = self._inbox
        while True:
            await self._ready.wait()
            self._ready.clear()
            self._wake_scheduled = False  # before draining: what arrives from now on wakes us again
            while inbox:
                await self._turn(client, inbox)
                if inbox:
                    await asyncio.sleep(0)  # let the detector, polling and HTTP run between turns

    async def _turn(self, client: Client, inbox: deque[_Item]) -> None:
        """Handle up to BATCH buffered items in order, then acknowledge the QoS>0 messages the bus took."""
        self._count_dropped()
        try:
            for _ in range(BATCH):
                if not inbox:
                    break
                item = inbox.popleft()
                if isinstance(item, _Inbound):
                    await self._inbound(client, item)
                elif isinstance(item, _Link):
                    self._flush_acks(client)  # acknowledged on the connection that delivered them
                    await self._on_link(item)
                else:
                    self.once.warn(
                        ("subscribe", item.topic),
                        "mqtt subscription to %r refused: %s",
                        item.topic,
                        item.reason,
                    )
        finally:
            # Also when cancelled at a stop: what the bus accepted is acknowledged, so not delivered twice.
            self._flush_acks(client)
            self._count_dropped()  # dropped during the turn: a later drop finds the inbox full, so a turn

    async def _inbound(self, client: Client, item: _Inbound) -> None:
        if item.qos == 0:
            self._qos0_taken += 1
        else:
            self._acked_taken += 1
            if (
                not self._room.is_set()
                and self._acked_posted - self._acked_taken <= self.settings.receive_maximum // 2
            ):
                self._room.set()  # paho's thread reads the socket again
        try:
            await self._handle(client, item)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not stop the source; the message is acknowledged so it cannot jam the session.
            self.stats.decode_errors["internal"] += 1
            topic = short(item.topic, 200)
            if self.once.warn(("internal",), "mqtt message on %s could not be handled", topic):
                log.exception("mqtt internal error")
            self._accepted(item)

    def _count_dropped(self) -> None:
        dropped = self._qos0_dropped - self._qos0_dropped_seen
        if dropped:
            self._qos0_dropped_seen += dropped
            self.stats.messages += dropped
            self.stats.decode_errors["inbox_full"] += dropped
            self.once.warn(
                ("inbox_full", "qos0"),
                "mqtt QoS 0 message dropped: %d wait for the event loop or the bus",
                self.settings.inbox_limit,
            )

    async def _handle(self, client: Client | None, item: _Inbound) -> None:
        self.stats.messages += 1
        self.stats.last_message = item.received
        self.once.forget(("silence",))
        if item.qos > 0 and item.dup and item.mid in self._published_unacked:
            # Redelivery of a message the bus already has (its ack was lost with the old connection).
            self._published_unacked.discard(item.mid)
            self._accepted(item)
            return
        routed = self.router.route(
            item.topic, item.payload, item.received, retained=item.retain, size=item.size
        )
        if routed.problems:
            # Keyed by subscription, never by topic: distinct topics must not grow the log or its memory.
            where = routed.subscription.template.text if routed.subscription else "<no subscription>"
            topic = short(item.topic, 200)
            for p in routed.problems:
                self._problem(p.cause, where, "mqtt %s on %s: %s", p.cause, topic, p.message)
        if routed.sample is not None:
            if client is not None and self._to_ack and self._bus_full():
                # The bus makes us wait: what it already took is acknowledged now, not after the wait.
                self._flush_acks(client)
            await self.bus.publish(routed.sample)
        self._accepted(item)

    def _bus_full(self) -> bool:
        return any(s.overflow == "block" and s.queue.full() for s in self.bus.subscriptions)

    def _problem(self, cause: str, where: str, msg: str, *args: object) -> None:
        self.stats.decode_errors[cause] += 1
        self.once.warn((cause, where), msg, *args)

    def _accepted(self, item: _Inbound) -> None:
        """The bus has the message (or it was skipped): acknowledge it at the end of this turn."""
        if item.qos > 0:
            self._to_ack.append(item)

    def _flush_acks(self, client: Client) -> None:
        if not self._to_ack:
            return
        items, self._to_ack = self._to_ack, []
        current = [i for i in items if i.generation == self._generation and self._link_up]
        for i in items:
            if i.generation != self._generation or not self._link_up:
                # The connection that delivered it is gone; the broker will redeliver it (dup) on the
                # resumed session, and that copy is acknowledged without publishing twice.
                self._published_unacked.add(i.mid)
        if current:
            _send_acks(client, current)
            self.acked += len(current)

    async def _on_link(self, link: _Link) -> None:
        s = self.settings
        fields: dict[str, object] = {
            "broker": f"{s.host}:{s.port}",
            "client_id": s.client_id,
            "reason": link.reason,
        }
        self.stats.connected = link.connected
        if link.connected:
            if self._ever_connected:
                self.stats.reconnects += 1
            self.takeover.connected(link.at)
            self._held_loss = None
            # A flapping link logs its first loss and the reconnect after it, then only counts.
            level = logging.INFO if self._down_logged and not self.takeover.active else logging.DEBUG
            self._ever_connected = True
            self._down_logged = False
            if not link.session_present:
                self._published_unacked.clear()
            fields["session_present"] = link.session_present
            log.log(level, "mqtt connected", extra={"fields": fields})
        elif self.takeover.disconnected(link.at, link.code, link.from_server):
            self._taken_over(link)
            return
        else:
            self._down_logged = self.once.warn(
                ("connect",), "mqtt link down (%s); reconnecting with back-off", link.reason
            )
        if self._reported != link.connected:
            self._reported = link.connected
            await self.bus.publish(self._source_status(link.connected, link.reason))

    def _taken_over(self, link: _Link) -> None:
        """Another client connected with our client id: said once, counted, and the source not lost."""
        self.stats.takeovers += 1
        if self._held_loss is None:
            self._held_loss = link
        s = self.settings
        if self.takeover.said_taken_over:
            evidence = 'the broker says "session taken over"'
        else:
            evidence = (
                f"the broker closed our connection within {s.takeover_window:g} s of connecting "
                f"{self.takeover.suspect_links} times in a row"
            )
        self.once.warn(
            ("takeover",),
            "mqtt client id %r is in use by another client (%s): each takes the session from the other on "
            "every reconnect; give each gateway its own mqtt.client_id",
            s.client_id,
            evidence,
        )

    def _source_status(self, connected: bool, reason: str) -> SourceStatus:
        return SourceStatus(
            source=self.settings.source,
            ts=self.clock(),
            connected=connected,
            reason=reason,
            devices=tuple(sorted(self.settings.devices)),
        )


class _ReadAhead:
    """paho's socket, read 64 KiB at a time.

    paho reads each packet in three `recv` calls (its type byte, its length bytes, its body), and each one
    releases the GIL to the event loop's thread and waits to get it back: three thread switches per message.
    This reads what the kernel has in one call and serves paho's small reads from memory; `pending()` tells
    paho's loop that bytes are waiting, as it does for TLS, so it reads on without waiting in select.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        pos, buf = self._pos, self._buf
        if pos < len(buf):
            end = min(pos + bufsize, len(buf))
            self._pos = end
            return buf[pos:end]
        data: bytes = self._sock.recv(max(bufsize, 65536))
        if len(data) <= bufsize:
            return data
        self._buf, self._pos = data, bufsize
        return data[:bufsize]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, shutdown, ...
        return getattr(self._sock, name)


_PUBACK = struct.Struct("!BBH")  # PUBACK, remaining length 2, packet id: "success" in MQTT 3.1.1 and 5


def _send_acks(client: Client, items: list[_Inbound]) -> None:
    """Acknowledge messages to the broker: all the QoS 1 ones as one write of their PUBACKs.

    paho's `ack()` queues one packet per message, and each wakes its network thread through a socket pair and
    costs a `send` of its own; the PUBACKs of a turn joined into one queued packet cost one of each. paho has
    no public call for that, so its packet queue is used directly (paho is pinned, and the tests check the
    broker got every acknowledgement); without it, `ack()` one by one.
    """
    queue = getattr(client, "_packet_queue", None)
    qos1 = [i.mid for i in items if i.qos == 1]
    if queue is not None and len(qos1) > 1:
        pack = _PUBACK.pack
        queue(MessageType.PUBACK, b"".join([pack(MessageType.PUBACK, 2, mid) for mid in qos1]), 0, 0)
    else:
        for mid in qos1:
            client.ack(mid, 1)
    for i in items:
        if i.qos == 2:
            client.ack(i.mid, 2)


def _filters(settings: MqttSettings) -> tuple[tuple[str, int], ...]:
    """One broker subscription per distinct filter, at the highest QoS asked for it."""
    best: dict[str, int] = {}
    for sub in settings.subscriptions:
        f = sub.template.filter
        best[f] = max(best.get(f, 0), sub.qos)
    return tuple(best.items())
