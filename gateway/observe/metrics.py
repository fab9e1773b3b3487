"""Prometheus metrics, read at scrape time from the plain counters the rest of the daemon keeps.

Nothing on a hot path touches prometheus_client: sources bump the dataclasses of gateway/core/stats.py;
the daemon hands those objects to this collector in an `Exported` (gateway/app/daemon.py), and the
collector reads them when /metrics is scraped. Each part may be absent: a site without Modbus or without
MQTT simply has no such series.

- lines, devices: LineStats and DeviceStats of the Modbus line actors.
- mqtt: the MqttStats of each subscriber.
- sink: the Forwarder (points written, write latency, spool, drops, dead letters).
- incidents: anything with `open_incidents()` (each incident has id, category, scope, severity):
  `meterwatch_incidents_open` counts them per category and scope, and `meterwatch_incident_open` carries
  one series per open incident (value 1, with the building its scope lies in), which Grafana shows as
  annotations. When it holds the detection engine (`engine`, as the IncidentManager does),
  `meterwatch_rule_glitches_total{device, rule}` counts the readings whose trigger the next reading cleared.
- evidence, retention, incident_store: the evidence keeper (readings stored with incidents, thinned to
  stay within the bound), the retention's pruning counts, and the incident store's file (its size in bytes,
  WAL included, read at each scrape).
- presence: gateway/observe/presence.py, so that `meterwatch_device_up` exists for every device of the
  site, also those no poller keeps stats for, and `meterwatch_device_info{device, <field>="text"} 1`
  (serial number, firmware version; a field named like a fixed label gets an `info_` prefix).

Naming: prefix meterwatch_, base units (seconds, bytes), counters end in _total.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.config import Site
from gateway.core import gctune
from gateway.core.bus import Bus
from gateway.core.stats import DeviceStats, Histogram, LineStats, MqttStats
from gateway.incidents.evidence import EvidenceKeeper
from gateway.incidents.retention import Retention
from gateway.observe.presence import DevicePresence
from gateway.respond.model import DeliveryStatus, NoticeState
from gateway.respond.sender import ChannelStats
from gateway.sink.forwarder import Forwarder, SinkStats
from gateway.sink.lineproto import LineEncoder
from gateway.sink.shedding import SHED_REASONS
from gateway.sink.spool import BufferStats, Spool
from rules.engine import Engine
from rules.model import Incident

# Error kinds always exposed (at 0 until they happen), so rate() and alerts see a series from the start.
LINE_ERROR_KINDS = ("timeout", "connection", "crc", "framing", "stale", "wrong_function", "wrong_unit")
DEVICE_ERROR_KINDS = (*LINE_ERROR_KINDS, "decode", "nan", "not_available")


def _with_zeros(counts: dict[str, int], kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    return sorted({**dict.fromkeys(kinds, 0), **counts}.items())


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    """A counter family with these label names; _one_counter for one without labels and its value."""
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _histogram(name: str, doc: str, *labels: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _one_counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter without labels and its one value."""
    return CounterMetricFamily(name, doc, value=value)


def _one_gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """A gauge without labels and its one value."""
    return GaugeMetricFamily(name, doc, value=value)


def _fixed_counts(
    name: str, doc: str, label: str, counts: Mapping[str, int], keys: Sequence[str]
) -> CounterMetricFamily:
    """One series per key of `keys`, in that order, at 0 while `counts` lacks it."""
    fam = _counter(name, doc, label)
    for key in keys:
        fam.add_metric([key], counts.get(key, 0))
    return fam


def _add_hist(fam: HistogramMetricFamily, values: list[str], h: Histogram) -> None:
    buckets = [("+Inf" if b == float("inf") else repr(float(b)), float(c)) for b, c in h.cumulative()]
    fam.add_metric(values, buckets, sum_value=h.total)


class OutboxDepth(Protocol):
    def depth(self) -> tuple[int, float | None]: ...


class OpenIncidents(Protocol):
    def open_incidents(self) -> Sequence[Incident]: ...


class FleetCounters(Protocol):
    """The fleet publisher's counters (gateway.fleet.publisher.FleetStats: observe may not import it)."""

    connected: bool
    published: int
    acked: int
    pending: int
    dropped: int
    refused: int
    connects: int


class CommandCounters(Protocol):
    """The fleet command client's counters (fleet.commands.CommandStats: observe may not import it)"""

    connected: bool
    received: int
    accepted: int
    rejected: int
    untold: int
    dropped: int


@dataclass
class Exported:
    """The stats objects /metrics reads at each scrape, handed over by the parts that keep them."""

    lines: Mapping[str, LineStats] = field(default_factory=dict)
    devices: Mapping[str, DeviceStats] = field(default_factory=dict)
    mqtt: Sequence[MqttStats] = ()
    sink: Forwarder | None = None
    incidents: OpenIncidents | None = None
    presence: DevicePresence | None = None
    channels: Mapping[str, ChannelStats] = field(default_factory=dict)  # the notify channels' workers
    outbox: OutboxDepth | None = None
    evidence: EvidenceKeeper | None = None
    retention: Retention | None = None
    incident_store: Path | None = None  # the SQLite file
    fleet: FleetCounters | None = None  # the fleet bridge's publisher, when the site has a fleet: section
    fleet_commands: CommandCounters | None = None  # fleet.commands enabled: signed commands from afar


# -- the snapshot: plain copies taken on the loop ----------------------------------------------------------
#
# The stats objects are mutated by the loop only (and the spool's stats by its one thread, as before), so
# they are read on the loop: `GatewayCollector.snapshot()` copies the numbers (a few microseconds a device)
# and `families()` builds the metric families from that copy alone, so it may run in any thread. The HTTP
# server takes the snapshot on the loop and renders (families and text, the expensive part: 0.46 CPU-s at
# 1,000 devices) in a worker thread (gateway/observe/http.py).


def _copy_hist(h: Histogram) -> Histogram:
    return Histogram(buckets=h.buckets, counts=list(h.counts), total=h.total, count=h.count)


def _copy_device(s: DeviceStats) -> DeviceStats:
    return DeviceStats(
        device=s.device,
        line=s.line,
        requests=s.requests,
        errors=Counter(s.errors),
        rtt=_copy_hist(s.rtt),
        up=s.up,
        last_success=s.last_success,
        cycles=s.cycles,
        skipped_cycles=s.skipped_cycles,
        samples=s.samples,
    )


def _copy_line(s: LineStats) -> LineStats:
    return dataclasses.replace(s, errors=Counter(s.errors))


def _copy_mqtt(s: MqttStats) -> MqttStats:
    return dataclasses.replace(s, decode_errors=Counter(s.decode_errors))


def _copy_channel(s: ChannelStats) -> ChannelStats:
    return dataclasses.replace(s, notices=Counter(s.notices), deliveries=Counter(s.deliveries))


@dataclass(slots=True)
class _LineSum:
    """The per-device counters of one line, summed (metrics_detail: line)."""

    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rtt: Histogram = field(default_factory=Histogram)
    cycles: int = 0

    def add(self, st: DeviceStats) -> None:
        self.requests += st.requests
        self.errors.update(st.errors)
        self.cycles += st.cycles
        if len(self.rtt.counts) != len(st.rtt.counts):  # every device uses RTT_BUCKETS; be sure anyway
            self.rtt = Histogram(buckets=st.rtt.buckets, counts=[0] * len(st.rtt.counts))
        self.rtt.counts = [a + b for a, b in zip(self.rtt.counts, st.rtt.counts, strict=True)]
        self.rtt.total += st.rtt.total
        self.rtt.count += st.rtt.count


@dataclass(slots=True)
class SeenSnapshot:
    """A device as the presence view saw it; `up` is only worked out for devices no poller keeps."""

    up: bool
    last_sample: float | None
    samples: int
    info: dict[str, str]


@dataclass(slots=True)
class SinkSnapshot:
    stats: SinkStats
    buffer: BufferStats
    durable: bool
    max_bytes: int
    dead: dict[str, int]
    accepting: bool
    shed: dict[str, int]
    disk_free: int | None


@dataclass(slots=True)
class OpenIncidentRow:
    id: str
    category: str
    scope: str
    severity: str
    building: str
    drill: bool


@dataclass(slots=True)
class StoreSnapshot:
    path: Path | None = None
    pruned_incidents: int | None = None  # None: no retention
    pruned_rows: dict[str, int] = field(default_factory=dict)
    prune_failures: int = 0
    last_prune: float | None = None
    evidence: tuple[int, int, int, int] | None = None  # stored, thinned, incidents tracked, ring readings


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape exposes, copied on the loop; families are built from it in any thread."""

    now: float
    lines: list[LineStats]
    devices: dict[str, DeviceStats]  # device id -> the poller's stats
    seen: dict[str, SeenSnapshot] | None  # None: no presence view
    mqtt: list[MqttStats]
    sink: SinkSnapshot | None
    skipped_values: int
    bus: tuple[int, list[tuple[str, int, int]]] | None  # published; (subscriber, queued, dropped)
    incidents: list[OpenIncidentRow] | None
    channels: list[tuple[str, ChannelStats]] | None  # None: no outbox
    outbox: tuple[int, float | None]
    glitches: dict[tuple[str, str], int] | None
    store: StoreSnapshot
    fleet: tuple[bool, int, int, int, int, int, int] | None = None  # FleetCounters, in its order
    fleet_commands: tuple[bool, int, int, int, int, int] | None = None  # CommandCounters, in its order
    gc: tuple[int, int, int, float, float, float] | None = None  # collections per generation, pauses


class GatewayCollector(Collector):
    def __init__(self, site: Site, exported: Exported, bus: Bus | None = None) -> None:
        self.site = site
        self.exported = exported
        self.bus = bus
        self.encoder = LineEncoder(site)

    def collect(self) -> Iterable[Metric]:
        """Snapshot and families in one go, in the caller's thread (the loop's, for the sync users)."""
        return list(self.families(self.snapshot()))

    # -- on the loop ------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Copies of every number the families need. Call it on the loop: it reads the live objects."""
        ex = self.exported
        now = time.time()
        devices = {d.device: _copy_device(d) for d in ex.devices.values()}
        seen: dict[str, SeenSnapshot] | None = None
        if ex.presence is not None:
            view = ex.presence
            seen = {
                dev_id: SeenSnapshot(
                    up=False if dev_id in devices else view.up(dev_id, now),
                    last_sample=s.last_sample,
                    samples=s.samples,
                    info=dict(s.info),  # replaced whole by the view, never changed in place; a copy anyway
                )
                for dev_id, s in view.devices.items()
            }
        return Snapshot(
            now=now,
            lines=[_copy_line(ls) for ls in ex.lines.values()],
            devices=devices,
            seen=seen,
            mqtt=[_copy_mqtt(st) for st in ex.mqtt],
            sink=self._snap_sink(),
            skipped_values=self.encoder.skipped_values,
            bus=None
            if self.bus is None
            else (
                self.bus.published,
                [(sub.name, sub.queue.qsize(), sub.dropped) for sub in self.bus.subscriptions],
            ),
            incidents=self._snap_incidents(),
            channels=None if ex.outbox is None else [(n, _copy_channel(st)) for n, st in ex.channels.items()],
            outbox=(0, None) if ex.outbox is None else ex.outbox.depth(),
            glitches=self._snap_glitches(),
            store=self._snap_store(),
            fleet=None
            if ex.fleet is None
            else (
                ex.fleet.connected,
                ex.fleet.published,
                ex.fleet.acked,
                ex.fleet.pending,
                ex.fleet.dropped,
                ex.fleet.refused,
                ex.fleet.connects,
            ),
            fleet_commands=None
            if ex.fleet_commands is None
            else (
                ex.fleet_commands.connected,
                ex.fleet_commands.received,
                ex.fleet_commands.accepted,
                ex.fleet_commands.rejected,
                ex.fleet_commands.untold,
                ex.fleet_commands.dropped,
            ),
            gc=(
                gctune.PAUSES.collections[0],
                gctune.PAUSES.collections[1],
                gctune.PAUSES.collections[2],
                gctune.PAUSES.pause_seconds_total,
                gctune.PAUSES.longest_pause_seconds,
                gctune.PAUSES.gen2_longest_pause_seconds,
            ),
        )

    def _snap_sink(self) -> SinkSnapshot | None:
        fw = self.exported.sink
        if fw is None:
            return None
        s = dataclasses.replace(
            fw.stats,
            write_errors=Counter(fw.stats.write_errors),
            write_latency=_copy_hist(fw.stats.write_latency),
        )
        return SinkSnapshot(
            stats=s,
            buffer=dataclasses.replace(fw.buffer.stats, dropped=Counter(fw.buffer.stats.dropped)),
            durable=fw.buffer.durable,
            max_bytes=fw.buffer.max_bytes,
            dead=dict(fw.dead.counts),
            accepting=fw.accepting,
            shed={**fw.storage.shed, "queue_full": fw.sub.dropped},
            disk_free=fw.buffer.disk_free() if isinstance(fw.buffer, Spool) else None,
        )

    def _snap_incidents(self) -> list[OpenIncidentRow] | None:
        if self.exported.incidents is None:
            return None
        return [
            OpenIncidentRow(
                id=str(inc.id),
                category=str(inc.category),
                scope=str(inc.scope),
                severity=str(inc.severity),
                building=self._building_of(str(inc.scope)),
                drill=bool(inc.drill),
            )
            for inc in self.exported.incidents.open_incidents()
        ]

    def _snap_glitches(self) -> dict[tuple[str, str], int] | None:
        engine = getattr(self.exported.incidents, "engine", None)
        if not isinstance(engine, Engine):
            return None
        return dict(engine.glitches)

    def _snap_store(self) -> StoreSnapshot:
        ex = self.exported
        snap = StoreSnapshot(path=ex.incident_store)
        ret = ex.retention
        if ret is not None:
            snap.pruned_incidents = ret.pruned.incidents
            snap.pruned_rows = asdict(ret.pruned)
            snap.prune_failures = ret.failures
            snap.last_prune = ret.last_run
        ev = ex.evidence
        if ev is not None:
            snap.evidence = (ev.points_stored, ev.points_thinned, len(ev.tracked), ev.ring_readings())
        return snap

    # -- anywhere: families from the snapshot alone ------------------------------------------------------
    def families(self, snap: Snapshot) -> Iterator[Metric]:
        yield from self._info()
        yield from self._modbus(snap)
        yield from self._devices(snap)
        yield from self._mqtt(snap)
        yield from self._sink(snap)
        yield from self._bus(snap)
        yield from self._incidents(snap)
        yield from self._notify(snap)
        yield from self._glitches(snap)
        yield from self._store(snap)
        yield from self._fleet(snap)
        yield from self._gc(snap)

    def _info(self) -> Iterator[Metric]:
        info = InfoMetricFamily("meterwatch_build", "meterwatch version and site")
        info.add_metric([], {"version": _version(), "site": self.site.config.site.id})
        yield info

    # -- Modbus lines and devices -------------------------------------------------------------------------
    def _modbus(self, snap: Snapshot) -> Iterator[Metric]:
        req = _counter(
            "meterwatch_modbus_line_requests", "Modbus requests sent on a line", "line", "transport"
        )
        err = _counter(
            "meterwatch_modbus_line_errors",
            "failed Modbus requests and dropped answers on a line, by kind (timeout, connection, crc, "
            "framing, stale, wrong_function, wrong_unit)",
            "line",
            "kind",
        )
        conn = _gauge("meterwatch_modbus_line_connected", "1 when the line's link is up", "line")
        rec = _counter("meterwatch_modbus_line_reconnects", "reconnections of a line", "line")
        cyc = _gauge("meterwatch_modbus_line_cycle_seconds", "duration of the line's last poll cycle", "line")
        for ls in snap.lines:
            req.add_metric([ls.line, ls.transport], ls.requests)
            for kind, n in _with_zeros(ls.errors, LINE_ERROR_KINDS):
                err.add_metric([ls.line, kind], n)
            conn.add_metric([ls.line], 1.0 if ls.connected else 0.0)
            rec.add_metric([ls.line], ls.reconnects)
            cyc.add_metric([ls.line], ls.last_cycle_seconds)
        yield from (req, err, conn, rec, cyc)

    def _devices(self, snap: Snapshot) -> Iterator[Metric]:
        """Per device; with `http.metrics_detail: line` only up, last success, skipped cycles and info stay
        per device, and requests, errors, round-trip times, cycles and samples are summed per line under
        the same names without the device label (sum by (line|kind|le) gives the same either way)."""
        per_line = self.site.config.http.metrics_detail == "line"
        polled = snap.devices
        view = snap.seen
        where = ("device", "building", "source")
        on_line = ("line",) if per_line else ("device", "line")
        up = _gauge("meterwatch_device_up", "1 when the device answers (or publishes) as expected", *where)
        last = _gauge(
            "meterwatch_device_last_success_timestamp_seconds",
            "when the device last answered (Unix time)",
            *where,
        )
        req = _counter("meterwatch_device_requests", "Modbus requests to a device", *on_line)
        err = _counter(
            "meterwatch_device_errors",
            "failed requests or values of a device, by kind "
            "(timeout, crc, framing, stale, wrong_function, wrong_unit, exception_<code>, decode, nan, "
            "not_available)",
            *on_line,
            "kind",
        )
        rtt = _histogram(
            "meterwatch_device_request_duration_seconds", "Modbus request round-trip time", *on_line
        )
        cycles = _counter("meterwatch_device_poll_cycles", "poll cycles run", *on_line)
        skipped = _counter(
            "meterwatch_device_skipped_cycles",
            "poll cycles skipped because the previous one overran its interval",
            "device",
            "line",
        )
        samples = _counter(
            "meterwatch_device_samples",
            "samples published for a device",
            *(("line", "source") if per_line else ("device", "source")),
        )
        sums: dict[str, _LineSum] = {}  # line -> the sums of its devices (line mode)
        sample_sums: dict[tuple[str, str], int] = {}  # (line, source) -> samples (line mode)
        configured = {d.id: d for d in self.site.config.devices}
        for dev_id in sorted(set(configured) | set(polled)):
            cfg = configured.get(dev_id)
            building = cfg.building if cfg else ""
            source = cfg.source if cfg else "modbus"
            st = polled.get(dev_id)
            seen = view.get(dev_id) if view is not None else None
            if st is not None:
                is_up = st.up
                last_ok = st.last_success
            else:
                is_up = seen.up if seen is not None else False
                last_ok = seen.last_sample if seen else None
            up.add_metric([dev_id, building, source], 1.0 if is_up else 0.0)
            if last_ok is not None:
                last.add_metric([dev_id, building, source], last_ok)
            if st is not None:
                skipped.add_metric([dev_id, st.line], st.skipped_cycles)
            if per_line:
                if st is not None:
                    sums.setdefault(st.line, _LineSum()).add(st)
                    key = (st.line, source)
                    sample_sums[key] = sample_sums.get(key, 0) + st.samples
                elif seen is not None:
                    # no poller (MQTT): no line; an empty label is no label to Prometheus
                    key = ((cfg.line or "") if cfg else "", source)
                    sample_sums[key] = sample_sums.get(key, 0) + seen.samples
            elif st is not None:
                req.add_metric([dev_id, st.line], st.requests)
                for kind, n in _with_zeros(st.errors, DEVICE_ERROR_KINDS):
                    err.add_metric([dev_id, st.line, kind], n)
                _add_hist(rtt, [dev_id, st.line], st.rtt)
                cycles.add_metric([dev_id, st.line], st.cycles)
                samples.add_metric([dev_id, source], st.samples)
            elif seen is not None:
                samples.add_metric([dev_id, source], seen.samples)
        for line, ls in sorted(sums.items()):
            req.add_metric([line], ls.requests)
            for kind, n in _with_zeros(ls.errors, DEVICE_ERROR_KINDS):
                err.add_metric([line, kind], n)
            _add_hist(rtt, [line], ls.rtt)
            cycles.add_metric([line], ls.cycles)
        for (line, src), n in sorted(sample_sums.items()):
            samples.add_metric([line, src], n)
        yield from (up, last, req, err, rtt, cycles, skipped, samples)
        if view is not None:
            yield self._device_info(view)

    @staticmethod
    def _device_info(view: Mapping[str, SeenSnapshot]) -> Metric:
        info = InfoMetricFamily(
            "meterwatch_device",
            "what a device says about itself (serial number, firmware)",
            labels=["device"],
        )
        for dev_id, seen in sorted(view.items()):
            if seen.info:
                fields = {
                    (f"info_{k}" if k in ("device", "instance", "job") else k): v
                    for k, v in seen.info.items()
                }
                info.add_metric([dev_id], fields)
        return info

    # -- MQTT -------------------------------------------------------------------------------------------
    def _mqtt(self, snap: Snapshot) -> Iterator[Metric]:
        now = snap.now
        all_stats = snap.mqtt
        conn = _gauge("meterwatch_mqtt_connected", "1 when connected to the broker", "source")
        msgs = _counter("meterwatch_mqtt_messages", "MQTT messages received", "source")
        dec = _counter(
            "meterwatch_mqtt_decode_errors",
            "MQTT decode problems, by cause: a message skipped (json, unknown_device, unknown_topic, "
            "too_large, too_deep, ...) or a field dropped (nan, bad_quantity, too_many_values, ...)",
            "source",
            "cause",
        )
        rec = _counter("meterwatch_mqtt_reconnects", "reconnections to the broker", "source")
        taken = _counter(
            "meterwatch_mqtt_takeovers",
            "disconnects because another client connected with our client id (a session takeover)",
            "source",
        )
        age = _gauge(
            "meterwatch_mqtt_last_message_age_seconds", "seconds since the last MQTT message", "source"
        )
        for st in all_stats:
            conn.add_metric([st.source], 1.0 if st.connected else 0.0)
            msgs.add_metric([st.source], st.messages)
            for cause, n in sorted(st.decode_errors.items()):
                dec.add_metric([st.source, cause], n)
            rec.add_metric([st.source], st.reconnects)
            taken.add_metric([st.source], st.takeovers)
            if st.last_message is not None:
                age.add_metric([st.source], max(0.0, now - st.last_message))
        yield from (conn, msgs, dec, rec, taken, age)

    # -- the sink and the spool -------------------------------------------------------------------------
    def _sink(self, snap: Snapshot) -> Iterator[Metric]:
        now, fw = snap.now, snap.sink
        yield _one_gauge(
            "meterwatch_sink_configured",
            "1 when the site has an influx section (samples are stored)",
            0.0 if fw is None else 1.0,
        )
        if fw is None:
            return
        s, b = fw.stats, fw.buffer
        mode = "durable" if fw.durable else "best_effort"
        yield _one_counter(
            "meterwatch_sink_samples_received", "samples the sink took from the bus", s.samples_in
        )
        yield _one_counter("meterwatch_sink_points_written", "points InfluxDB accepted", s.points_written)
        yield _one_counter(
            "meterwatch_sink_write_requests", "write requests sent to InfluxDB", s.write_requests
        )
        yield _fixed_counts(
            "meterwatch_sink_write_errors",
            "failed write requests by outcome (retry, too_large, rejected, config, unreachable)",
            "kind",
            s.write_errors,
            ("retry", "too_large", "rejected", "config", "unreachable"),
        )
        lat = _histogram("meterwatch_sink_write_duration_seconds", "duration of one write request")
        _add_hist(lat, [], s.write_latency)
        yield lat
        yield _one_gauge(
            "meterwatch_sink_reachable", "1 when InfluxDB answered the last request", float(s.reachable)
        )
        yield _one_gauge(
            "meterwatch_sink_auth_error",
            "HTTP status (401, 403, 404, 405; 400 for an unsupported path) while InfluxDB refuses our "
            "token, org, bucket or URL; 0 when fine",
            float(s.config_error),
        )
        if s.last_success is not None:
            yield _one_gauge(
                "meterwatch_sink_last_success_timestamp_seconds",
                "time of the last accepted write",
                s.last_success,
            )
        yield _fixed_counts(
            "meterwatch_sink_dead_letter_points",
            "points moved to the dead-letter file",
            "reason",
            fw.dead,
            ("rejected", "too_large"),
        )
        for name, doc, value in (
            ("meterwatch_spool_points", "points waiting in the spool", b.points),
            ("meterwatch_spool_bytes", "bytes waiting in the spool", b.bytes),
        ):
            per_mode = _gauge(name, doc, "mode")
            per_mode.add_metric([mode], value)
            yield per_mode
        yield _one_gauge("meterwatch_spool_max_bytes", "the spool's byte bound", fw.max_bytes)
        yield _one_gauge(
            "meterwatch_spool_oldest_age_seconds",
            "age of the oldest point waiting in the spool (0 when empty)",
            max(0.0, now - b.oldest_enqueued) if b.oldest_enqueued is not None else 0.0,
        )
        yield _fixed_counts(
            "meterwatch_spool_dropped_points",
            "points dropped past the spool's bound, by reason",
            "reason",
            b.dropped,
            ("bytes", "age"),
        )
        yield _one_counter("meterwatch_spool_commits", "spool transactions (one per batch)", b.commits)
        yield _one_counter("meterwatch_spool_quarantined", "corrupt spool files moved aside", b.quarantined)
        yield _one_counter(
            "meterwatch_spool_append_errors",
            "failed spool calls (appends, reads, deletes, dead-letter writes)",
            s.spool_errors,
        )
        yield _one_gauge(
            "meterwatch_spool_failing",
            "1 while the spool cannot store samples (a full disk, an I/O error): new samples are shed",
            0.0 if fw.accepting else 1.0,
        )
        shed = _fixed_counts(
            "meterwatch_sink_shed_samples",
            "samples the sink did not store, by reason: disk_full and storage_error (the spool failed), "
            "queue_full (bus events the sink's queue had no room for within its bounded wait)",
            "reason",
            fw.shed,
            SHED_REASONS,
        )
        yield shed
        free = fw.disk_free
        if free is not None:
            yield _one_gauge(
                "meterwatch_spool_disk_free_bytes", "free bytes on the spool's file system", float(free)
            )
        yield _one_counter(
            "meterwatch_sink_values_skipped",
            "NaN or infinite values line protocol cannot carry",
            snap.skipped_values,
        )

    def _bus(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.bus is None:
            return
        published, subs = snap.bus
        pub = _one_counter("meterwatch_bus_published", "events published on the internal bus", published)
        depth = _gauge("meterwatch_bus_queue_events", "events waiting per subscriber", "subscriber")
        dropped = _counter(
            "meterwatch_bus_dropped_events",
            "events a subscriber lost (best-effort ones; the sink sheds after a bounded wait)",
            "subscriber",
        )
        for name, queued, lost in subs:
            depth.add_metric([name], queued)
            dropped.add_metric([name], lost)
        yield from (pub, depth, dropped)

    # -- incidents --------------------------------------------------------------------------------------
    def _notify(self, snap: Snapshot) -> Iterator[Metric]:
        """Notices by channel and state, target results, failing channels, the outbox's depth and age."""
        if snap.channels is None:
            return
        now = snap.now
        notices = _counter(
            "meterwatch_notices", "notice rows recorded, by channel and state", "channel", "state"
        )
        targets = _counter(
            "meterwatch_notice_deliveries",
            "target results of notices, by channel and status",
            "channel",
            "status",
        )
        failing = _gauge(
            "meterwatch_notify_channel_failing", "1 when a channel fails longer than allowed", "channel"
        )
        last = _gauge(
            "meterwatch_notify_channel_last_success_timestamp_seconds",
            "when a target of the channel last took a message (Unix time)",
            "channel",
        )
        for name, st in sorted(snap.channels, key=lambda c: c[0]):
            for state in NoticeState:
                notices.add_metric([name, str(state)], st.notices.get(str(state), 0))
            for status in DeliveryStatus:
                targets.add_metric([name, str(status)], st.deliveries.get(str(status), 0))
            failing.add_metric([name], 1.0 if st.failing else 0.0)
            if st.last_success is not None:
                last.add_metric([name], st.last_success)
        depth, oldest = snap.outbox
        yield from (notices, targets, failing, last)
        yield _one_gauge("meterwatch_outbox_notices", "notice rows not yet delivered", depth)
        yield _one_gauge(
            "meterwatch_outbox_oldest_age_seconds",
            "age of the oldest notice row not yet delivered (0 when none)",
            0.0 if oldest is None else max(0.0, now - oldest),
        )

    def _incidents(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.incidents is None:
            return
        incidents = snap.incidents
        counts = _gauge(
            "meterwatch_incidents_open", "open incidents by category and scope", "category", "scope"
        )
        each = _gauge(
            "meterwatch_incident_open",
            "1 for every open incident (Grafana annotations come from this series); building is empty for a "
            "site-wide scope",
            "incident_id",
            "category",
            "scope",
            "severity",
            "building",
        )
        per_key: dict[tuple[str, str], int] = {}
        drills = _gauge("meterwatch_drills_open", "open drills (meterwatch drill), never counted above")
        drills.add_metric([], float(sum(1 for inc in incidents if inc.drill)))
        for inc in incidents:
            if inc.drill:  # a drill must not page anyone through the gateway's own alerts or annotations
                continue
            category, scope = inc.category, inc.scope
            per_key[(category, scope)] = per_key.get((category, scope), 0) + 1
            each.add_metric([inc.id, category, scope, inc.severity, inc.building], 1.0)
        for (category, scope), n in sorted(per_key.items()):
            counts.add_metric([category, scope], n)
        yield from (counts, each, drills)

    def _glitches(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.glitches is None:
            return
        fam = _counter(
            "meterwatch_rule_glitches",
            "readings that showed a rule's trigger which the next reading cleared (a glitch: no alert)",
            "device",
            "rule",
        )
        for (device, rule), n in sorted(snap.glitches.items()):
            fam.add_metric([device, rule], n)
        yield fam

    def _store(self, snap: Snapshot) -> Iterator[Metric]:
        """The incident store's size, its retention and the evidence kept with incidents."""
        st = snap.store
        path = st.path  # its size is read here, in the rendering thread: a stat touches no live object
        if path is not None:
            size = 0
            for part in (path, path.with_name(path.name + "-wal")):
                try:
                    size += part.stat().st_size
                except OSError:  # no WAL right after a checkpoint, or the file is not there yet
                    continue
            yield _one_gauge(
                "meterwatch_incident_store_bytes",
                "size of the incident store (SQLite file and its WAL)",
                size,
            )
        if st.pruned_incidents is not None:
            yield _one_counter(
                "meterwatch_incidents_pruned",
                "resolved incidents deleted past review.retention, with everything of theirs",
                st.pruned_incidents,
            )
            rows = _counter(
                "meterwatch_incident_store_pruned_rows", "rows deleted by the retention, by table", "table"
            )
            for table, n in st.pruned_rows.items():
                rows.add_metric([table], n)
            yield rows
            yield _one_counter(
                "meterwatch_incident_store_prune_failures",
                "prunings that failed (tried again)",
                st.prune_failures,
            )
            if st.last_prune is not None:
                yield _one_gauge(
                    "meterwatch_incident_store_last_prune_timestamp_seconds",
                    "when the retention last pruned the incident store",
                    st.last_prune,
                )
        if st.evidence is not None:
            stored, thinned, tracked, ring = st.evidence
            yield _one_counter(
                "meterwatch_evidence_points",
                "readings stored with incidents as their evidence",
                stored,
            )
            yield _one_counter(
                "meterwatch_evidence_thinned_points",
                "readings not kept (or dropped later) to hold an incident's evidence within max_points",
                thinned,
            )
            yield _one_gauge(
                "meterwatch_evidence_incidents",
                "incidents whose evidence is being collected",
                tracked,
            )
            yield _one_gauge(
                "meterwatch_evidence_ring_readings",
                "readings held in memory for the evidence of incidents yet to open",
                ring,
            )

    def _fleet(self, snap: Snapshot) -> Iterator[Metric]:
        """The fleet bridge: events owed to the fleet's broker and what became of them."""
        if snap.fleet is None:
            return
        connected, published, acked, pending, dropped, refused, connects = snap.fleet
        yield _one_gauge("meterwatch_fleet_connected", "1 while connected to the broker", int(connected))
        yield _one_counter(
            "meterwatch_fleet_published", "fleet events sent to the broker (a resend counts again)", published
        )
        yield _one_counter("meterwatch_fleet_acked", "fleet events the broker acknowledged", acked)
        yield _one_gauge("meterwatch_fleet_pending", "fleet events written and not yet acknowledged", pending)
        yield _one_counter(
            "meterwatch_fleet_dropped", "fleet events dropped past fleet.buffer (oldest first)", dropped
        )
        yield _one_counter("meterwatch_fleet_refused", "fleet events the broker refused (logged)", refused)
        yield _one_counter("meterwatch_fleet_connects", "connections made to the fleet broker", connects)
        if snap.fleet_commands is None:
            return
        c_connected, received, accepted, rejected, untold, c_dropped = snap.fleet_commands
        yield _one_gauge(
            "meterwatch_fleet_commands_connected", "1 while the command topic is subscribed", int(c_connected)
        )
        yield _one_counter(
            "meterwatch_fleet_commands_received", "commands from the fleet view received", received
        )
        outcomes = _counter(
            "meterwatch_fleet_commands",
            "commands from the fleet view by outcome (each answered once)",
            "outcome",
        )
        outcomes.add_metric(["accepted"], accepted)
        outcomes.add_metric(["rejected"], rejected)
        yield outcomes
        yield _one_counter(
            "meterwatch_fleet_commands_untold",
            "malformed or unsigned commands past the rate limit: logged, no outcome published",
            untold,
        )
        yield _one_counter(
            "meterwatch_fleet_commands_dropped", "QoS 0 commands dropped past the 1,000 waiting", c_dropped
        )

    def _gc(self, snap: Snapshot) -> Iterator[Metric]:
        """Python's garbage collector as counted since start (gateway/core/gctune.py): its pauses stall
        polling, so the longest one is worth watching."""
        if snap.gc is None:
            return
        gen0, gen1, gen2, total, longest, gen2_longest = snap.gc
        runs = _counter("meterwatch_gc_collections", "garbage collections, by generation", "generation")
        for gen, n in (("0", gen0), ("1", gen1), ("2", gen2)):
            runs.add_metric([gen], n)
        yield runs
        yield _one_counter("meterwatch_gc_pause_seconds", "time the loop stood in garbage collection", total)
        yield _one_gauge("meterwatch_gc_longest_pause_seconds", "the longest collection since start", longest)
        yield _one_gauge(
            "meterwatch_gc_gen2_longest_pause_seconds", "the longest full (gen 2) collection", gen2_longest
        )

    def _building_of(self, scope: str) -> str:
        """The one building a scope (building:, domain:, device:, line:) lies in; "" for site or mixed."""
        kind, _, ident = scope.partition(":")
        try:
            if kind == "building":
                return ident
            if kind == "domain":
                return self.site.domains()[ident][0].id
            if kind == "device":
                return self.site.device(ident).building
            if kind == "line":
                buildings = {d.building for d in self.site.devices_on(ident)}
                return buildings.pop() if len(buildings) == 1 else ""
        except KeyError:
            return ""
        return ""


def _version() -> str:
    try:
        return importlib.metadata.version("meterwatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Frozen(Collector):
    """The gateway's families of one snapshot (safe in any thread: it reads the copy only)."""

    def __init__(self, collector: GatewayCollector, snap: Snapshot) -> None:
        self.collector = collector
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return self.collector.families(self.snap)


class MetricsRenderer:
    """What /metrics serves: the snapshot is taken on the loop (the only thread that mutates the stats),
    the families and the text are made in one worker thread of our own, so a scrape costs the loop the
    copy only. One thread, not the loop's default executor: scrapes queue behind each other instead of
    taking threads the spool and other `to_thread` users need.

    `extra` collectors run in that worker thread too: they must read nothing the loop mutates in place
    (process and platform read /proc; the HTTP guard reads two ints)."""

    def __init__(
        self, site: Site, exported: Exported, bus: Bus | None = None, extra: Sequence[Collector] = ()
    ) -> None:
        self.collector = GatewayCollector(site, exported, bus)
        self.extra: list[Collector] = [
            ProcessCollector(registry=None),
            PlatformCollector(registry=None),
            *extra,
        ]
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-render")

    def render(self, snap: Snapshot) -> bytes:
        """The text format of one snapshot (any thread)."""
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Frozen(self.collector, snap))
        for c in self.extra:
            reg.register(c)
        return generate_latest(reg)

    async def scrape(self) -> bytes:
        snap = self.collector.snapshot()  # on the loop, before the first await: nothing changes meanwhile
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.render, snap)

    def close(self) -> None:
        self._thread.shutdown(wait=False)


def make_registry(site: Site, exported: Exported, bus: Bus | None = None) -> CollectorRegistry:
    """A registry of our own (not the global one): the gateway's collector plus process and platform."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GatewayCollector(site, exported, bus))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg
