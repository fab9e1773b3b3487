"""The publisher: sends the fleet outbox to the company's broker, in order, with QoS 1, and says how the
gateway is (its retained state, a heartbeat, the last will, the daily KPIs).

One thread of its own drives the outbox; paho's network loop runs in paho's thread (paho-mqtt 2.x, MQTT 5,
clean_start False with a session expiry, so the broker keeps the session through a short absence). At most
WINDOW rows are in flight (fewer if the broker's Receive Maximum is lower: a broker may disconnect a client
that exceeds it); a row is deleted only when its PUBACK comes back. A connection lost with rows in
flight: paho sends them again on reconnect under the same packet ids. The gateway restarted: every row still
in the outbox is sent again from the oldest, under the same event ids (a row in flight at the stop may so
arrive twice; a subscriber recognises it by its id). The outbox is bounded (fleet.buffer): an outage longer
than the buffer drops the oldest events and counts them (FleetStats.dropped).

The gateway's state and the KPI snapshot are not queued: they are current state, published again at every
connect, every heartbeat and every day at fleet.kpi_at.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import Site
from gateway.config.fleet import FleetConfig
from gateway.fleet.bridge import FleetBridge, NoticeEvents
from gateway.fleet.kpi import kpi_payload, next_due
from gateway.fleet.mqttconn import gateway_client, on_disconnect
from gateway.fleet.outbox import FleetOutbox
from gateway.fleet.topics import VERSION, dumps, with_id

log = logging.getLogger("meterwatch.fleet")

WINDOW = 100  # outbox rows in flight at once: bounds paho's memory whatever the backlog
RESERVED = 2  # in-flight places kept for the gateway state and the KPI snapshot
DELETE_RUN = 200  # acknowledged rows deleted in one transaction at most ...
DELETE_EVERY = 0.25  # ... or this many seconds after the first of them was acknowledged
IDLE = 1.0  # seconds the thread sleeps with nothing to do (commits and acks wake it sooner)
NOTICE_EVERY = 2.0  # seconds between two reads of the respond side's delivery log
PENDING_EVERY = 1.0  # seconds between two counts of the outbox (for the metrics)
ACK_EVERY = 0.02  # seconds the thread waits at most, with rows in flight, to take the PUBACKs come meanwhile


@dataclass
class FleetStats:
    """What /metrics reads (plain attributes, written by the publisher's threads)."""

    connected: bool = False
    published: int = 0  # outbox rows handed to the broker since start (a resend counts again)
    acked: int = 0  # outbox rows the broker acknowledged (and so deleted) since start
    pending: int = 0  # rows in the outbox now (written, not yet acknowledged)
    dropped: int = 0  # rows dropped past fleet.buffer, in this store's whole life
    refused: int = 0  # rows the broker refused (a PUBACK error code, e.g. not authorized): logged, deleted
    connects: int = 0  # successful connections since start
    window: int = 0  # outbox rows in flight at most on this connection (the broker's Receive Maximum - 2)


# The gateway's own state for its retained topic: buildings, devices up and total, open incidents
GatewayFacts = Callable[[], dict[str, Any]]


class FleetPublisher:
    name = "fleet"

    def __init__(
        self,
        site: Site,
        cfg: FleetConfig,
        bridge: FleetBridge,
        facts: GatewayFacts,
        version: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.bridge = bridge
        self.topics = bridge.topics
        self.facts = facts
        self.version = version
        self.clock = clock
        self.stats = FleetStats()
        self.started_at = clock()
        self.client_id = f"meterwatch-fleet-{self.topics.site}-{self.topics.gateway}"[:128]
        self._cond = threading.Condition()
        self._woken = False
        self._stopping = False
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()  # (mid, refused)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._sent_to = 0  # the last seq handed to paho
        self._announce = False  # connected: publish the state and the KPIs
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._kpi: str | None = None
        self._kpi_due = 0.0
        self._notice = NoticeEvents(self.topics)
        self._facts: dict[str, Any] = {}
        self._next_notice = self._next_count = self._next_beat = 0.0
        self._epoch = 0  # the outbox's (event ids)
        self._window = WINDOW  # outbox rows in flight at most, for the broker of this connection
        self._unflushed: list[int] = []  # acknowledged rows not deleted yet
        self._first_unflushed = 0.0
        self._refused_logged = False  # a refused connection is logged once until a connect succeeds
        self._outbox: FleetOutbox | None = None

    # ---- the component -----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                # the gateway's facts are read on the loop, where the parts that keep them live
                self._facts = self.facts()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self.cfg.heartbeat, 5.0))
        finally:
            await asyncio.to_thread(self.stop, 5.0)

    def start(self) -> None:
        """Start the thread (and paho's)."""
        self._facts = self.facts()
        self._thread = threading.Thread(target=self._main, name="fleet-publisher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Rows were committed (the detector's on_commit): send them now."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        """Publish the offline state (a clean stop fires no last will), disconnect, end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)

    # ---- payloads ------------------------------------------------------------------------------------------
    def state_payload(self, state: str, now: float) -> str:
        facts = self._facts
        return dumps(
            {
                "v": VERSION,
                "type": "gateway",
                "site": self.topics.site,
                "gateway": self.topics.gateway,
                "state": state,
                "at": now,
                "started_at": self.started_at,
                "version": self.version,
                "buildings": facts.get("buildings", []),
                "shard": self.site.shard.id if self.site.shard is not None else None,
                "devices_up": facts.get("devices_up", 0),
                "devices_total": facts.get("devices_total", 0),
                "open_incidents": facts.get("open_incidents", 0),
                "keepalive": self.cfg.keepalive,
                "heartbeat": self.cfg.heartbeat,
            }
        )

    # ---- paho --------------------------------------------------------------------------------------------
    def _make_client(self) -> Client:
        cfg = self.cfg
        client = gateway_client(self.client_id, cfg, self.site.path.parent)
        # the broker says this for us when we vanish without a DISCONNECT (kill -9, power, network)
        client.will_set(self.topics.state, self.state_payload("offline", self.clock()), qos=1, retain=True)
        client.max_inflight_messages_set(WINDOW + RESERVED)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = on_disconnect(self._lost)
        client.on_publish = self._on_publish
        return client

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            if not self._refused_logged:  # paho tries again with its backoff: said once, not each time
                self._refused_logged = True
                log.error(
                    "the fleet broker refused the connection (user name, password or client id?); "
                    "tried again, events are kept",
                    extra={"fields": {"broker": self.cfg.broker, "reason": str(reason)}},
                )
            return
        self._refused_logged = False
        # the broker's Receive Maximum (65535 when it names none) bounds what is in flight, the state and
        # KPI messages included; paho itself does not heed it (and its own cap cannot change while connected)
        receive_max = int(getattr(props, "ReceiveMaximum", 65535) or 65535)
        self._window = self.stats.window = max(1, min(WINDOW, receive_max - RESERVED))
        self.stats.connected = True
        self.stats.connects += 1
        log.info(
            "connected to the fleet broker",
            extra={"fields": {"broker": self.cfg.broker, "session_present": flags.session_present}},
        )
        with self._cond:
            self._announce = True
            self._woken = True
            self._cond.notify()

    def _lost(self, reason: ReasonCode) -> None:
        was = self.stats.connected
        self.stats.connected = False
        if was and not self._stopping:
            log.warning(
                "lost the fleet broker; events are kept and sent on return",
                extra={"fields": {"broker": self.cfg.broker, "reason": str(reason)}},
            )

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        with self._cond:
            self._acks.append((mid, reason.is_failure))
            # a run of PUBACKs wakes the thread at once, so the window refills before it runs dry
            if len(self._acks) >= max(1, self._window // 4):
                self._woken = True
                self._cond.notify()

    # ---- the thread --------------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._outbox = FleetOutbox(self.bridge.store_path)
            self._epoch = self._outbox.epoch()
            now = self.clock()
            self._kpi_due = now  # one snapshot at start, then daily at kpi_at
            client = self._client = self._make_client()
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.cfg.session_expiry)
            addr = self.cfg.address
            client.connect_async(
                addr.host, addr.port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
            )
            client.loop_start()
            while True:
                with self._cond:
                    if not self._woken and not self._stopping:
                        # PUBACKs are taken in runs (a quarter window, or ACK_EVERY): one delete
                        # transaction per run instead of one per message; no PUBACK comes while the
                        # broker is away, so an outage costs a wake a second, not fifty
                        acks_due = self._inflight and self.stats.connected
                        wait = ACK_EVERY if acks_due else DELETE_EVERY if self._unflushed else IDLE
                        self._cond.wait(wait)
                    self._woken = False
                    if self._stopping:
                        break
                try:
                    self._step(self.clock())
                except Exception:
                    # e.g. the store locked past its timeout: the rows stay, the next step tries again
                    log.exception("the fleet publisher failed a step; tried again in a second")
                    with self._cond:
                        self._cond.wait(1.0)
        except Exception:
            log.exception("the fleet publisher cannot start; fleet events are kept in the outbox")
            raise
        finally:
            self._shutdown()

    def _step(self, now: float) -> None:
        assert self._outbox is not None
        self._take_acks()
        if now >= self._next_notice:
            self._next_notice = now + NOTICE_EVERY
            self._take_notices(now)
        if now >= self._next_count:
            self._next_count = now + PENDING_EVERY
            self.stats.pending = self._outbox.pending()
            self.stats.dropped = self._outbox.dropped()
        if not self.stats.connected:
            return
        if self._announce or now >= self._next_beat:
            self._next_beat = now + self.cfg.heartbeat
            self._publish_direct(self.topics.state, self.state_payload("online", now).encode())
            if self._announce and self._kpi is not None:  # the broker may have lost it
                self._publish_direct(self.topics.kpi, self._kpi.encode())
            self._announce = False
        if now >= self._kpi_due:
            self._make_kpi(now)
        self._fill()

    def _publish_direct(self, topic: str, payload: bytes) -> MQTTMessageInfo | None:
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=True)
        return info if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _make_kpi(self, now: float) -> None:
        self._kpi_due = next_due(now, self.cfg.kpi_clock, self.site.config.site.timezone)
        try:
            self._kpi = kpi_payload(self.site, self.bridge.store_path, self.topics, now)
        except Exception:
            log.exception("cannot compute the KPI snapshot; tried again at the next kpi_at")
            return
        self._publish_direct(self.topics.kpi, self._kpi.encode())

    def _take_notices(self, now: float) -> None:
        assert self._outbox is not None
        try:
            self._outbox.take_notices(self._notice, now, self.cfg.buffer)
        except Exception:
            log.exception("cannot read the notices' delivery log for the fleet; tried again")

    def _take_acks(self, flush: bool = False) -> None:
        """Take the PUBACKs come in; the rows they acknowledge are deleted in runs (DELETE_RUN rows or
        DELETE_EVERY seconds): fewer transactions, and a gateway's flash written less often. A crash loses
        at most that run's deletions: those rows are sent again, under their ids."""
        assert self._outbox is not None
        done: list[int] = []
        while self._acks:
            mid, refused = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # the state or a KPI message
            if refused:
                self.stats.refused += 1
                log.error("the fleet broker refused an event; it is dropped", extra={"fields": {"seq": seq}})
            else:
                self.stats.acked += 1
            done.append(seq)
        if done and not self._unflushed:
            self._first_unflushed = time.monotonic()
        self._unflushed.extend(done)
        if self._unflushed and (
            flush
            or len(self._unflushed) >= DELETE_RUN
            or time.monotonic() - self._first_unflushed >= DELETE_EVERY
        ):
            self._outbox.acked(self._unflushed)
            self._unflushed = []

    def _fill(self) -> None:
        """Hand paho the next rows, up to the window in flight."""
        assert self._outbox is not None and self._client is not None
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        for row in self._outbox.after(self._sent_to, room):
            payload = with_id(row.payload, self.topics.event_id(self._epoch, row.seq))
            info = self._client.publish(row.topic, payload, qos=1, retain=row.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning(
                    "paho refused a fleet message; tried again", extra={"fields": {"rc": int(info.rc)}}
                )
                return
            # NO_CONN: paho keeps a QoS 1 message and sends it on reconnect, so it is in flight all the same
            self._inflight[info.mid] = row.seq
            self._sent_to = row.seq
            self.stats.published += 1
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                return

    def _shutdown(self) -> None:
        client = self._client
        if client is not None:
            if self.stats.connected:
                info = self._publish_direct(
                    self.topics.state, self.state_payload("offline", self.clock()).encode()
                )
                if info is not None:
                    with contextlib.suppress(RuntimeError, ValueError):
                        info.wait_for_publish(3.0)
                self._take_acks_quietly()
                client.disconnect()
            client.loop_stop()
        if self._outbox is not None:
            self._take_acks_quietly()
            self._outbox.close()
        self.stats.connected = False

    def _take_acks_quietly(self) -> None:
        try:
            self._take_acks(flush=True)
        except Exception:
            log.exception("cannot record the fleet broker's last acknowledgements; those rows are sent again")
