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

Threads: paho callbacks only copy the message and post it with `loop.call_soon_threadsafe`; decoding,
stats, logging and bus publishing all happen on the event loop, one message at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
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


@dataclass(frozen=True, slots=True)
class _Inbound:
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
        self._inbox: asyncio.Queue[_Item] | None = None
        self._qos0_waiting = 0
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
        self._inbox = asyncio.Queue()
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
        await asyncio.to_thread(client.loop_stop)
        self._start(client)

    async def _shutdown(self, client: Client) -> None:
        if self._link_up:
            # A clean DISCONNECT does not fire the will, so say "offline" ourselves.
            info = client.publish(self.settings.status_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(ValueError, RuntimeError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._link_up = False
        self.stats.connected = False
        if self._reported is not False:
            self._reported = False
            self.bus.publish_nowait(self._source_status(False, "stopped"))
        log.info("mqtt subscriber stopped", extra={"fields": {"client_id": self.settings.client_id}})

    # ------------------------------------------------------------------------- paho thread (callbacks)
    # Never raise here: an exception would end paho's network thread.

    def _post(self, item: _Item) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: the message stays unacknowledged
            loop.call_soon_threadsafe(self._enqueue, item)

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
            self._post(
                _Inbound(
                    topic=topic,
                    payload=bytes(payload),
                    size=size,
                    qos=msg.qos,
                    mid=msg.mid,
                    retain=bool(msg.retain),
                    dup=bool(msg.dup),
                    received=self.clock(),
                    generation=self._generation,
                )
            )
        except Exception:  # pragma: no cover - defensive: keep the network thread alive
            log.exception("mqtt on_message failed")

    # ------------------------------------------------------------------------------- event loop side

    def _enqueue(self, item: _Item) -> None:
        assert self._inbox is not None
        if isinstance(item, _Inbound) and item.qos == 0:
            # QoS 0 has no broker-side flow control: bound what waits for a blocked bus.
            if self._qos0_waiting >= self.settings.inbox_limit:
                self.stats.messages += 1
                self._problem(
                    "inbox_full",
                    "qos0",
                    "mqtt QoS 0 message dropped: %d wait for the bus",
                    self._qos0_waiting,
                )
                return
            self._qos0_waiting += 1
        self._inbox.put_nowait(item)

    async def _consume(self, client: Client) -> None:
        assert self._inbox is not None
        while True:
            item = await self._inbox.get()
            if isinstance(item, _Link):
                await self._on_link(item)
                continue
            if isinstance(item, _Refused):
                self.once.warn(
                    ("subscribe", item.topic), "mqtt subscription to %r refused: %s", item.topic, item.reason
                )
                continue
            if item.qos == 0:
                self._qos0_waiting -= 1
            try:
                await self._handle(client, item)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not stop the source; the message is acknowledged so it cannot jam the session.
                self.stats.decode_errors["internal"] += 1
                if self.once.warn(
                    ("internal",), "mqtt message on %s could not be handled", short(item.topic, 200)
                ):
                    log.exception("mqtt internal error")
                self._ack(client, item)

    async def _handle(self, client: Client, item: _Inbound) -> None:
        self.stats.messages += 1
        self.stats.last_message = item.received
        self.once.forget(("silence",))
        if item.qos > 0 and item.dup and item.mid in self._published_unacked:
            # Redelivery of a message the bus already has (its ack was lost with the old connection).
            self._published_unacked.discard(item.mid)
            self._ack(client, item)
            return
        routed = self.router.route(
            item.topic, item.payload, item.received, retained=item.retain, size=item.size
        )
        # Keyed by subscription, never by topic: distinct topics must not grow the log or its memory.
        where = routed.subscription.template.text if routed.subscription else "<no subscription>"
        topic = short(item.topic, 200)
        for p in routed.problems:
            self._problem(p.cause, where, "mqtt %s on %s: %s", p.cause, topic, p.message)
        if routed.sample is not None:
            await self.bus.publish(routed.sample)
        self._ack(client, item)

    def _problem(self, cause: str, where: str, msg: str, *args: object) -> None:
        self.stats.decode_errors[cause] += 1
        self.once.warn((cause, where), msg, *args)

    def _ack(self, client: Client, item: _Inbound) -> None:
        if item.qos == 0:
            return
        if item.generation == self._generation and self._link_up:
            client.ack(item.mid, item.qos)
            self.acked += 1
        else:
            # The connection that delivered it is gone; the broker will redeliver it (dup) on the
            # resumed session, and that copy is acknowledged without publishing twice.
            self._published_unacked.add(item.mid)

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


def _filters(settings: MqttSettings) -> tuple[tuple[str, int], ...]:
    """One broker subscription per distinct filter, at the highest QoS asked for it."""
    best: dict[str, int] = {}
    for sub in settings.subscriptions:
        f = sub.template.filter
        best[f] = max(best.get(f, 0), sub.qos)
    return tuple(best.items())
