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

import importlib.metadata
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.config import Site
from gateway.core.bus import Bus
from gateway.core.stats import DeviceStats, Histogram, LineStats, MqttStats
from gateway.incidents.evidence import EvidenceKeeper
from gateway.incidents.retention import Retention
from gateway.observe.presence import DevicePresence
from gateway.respond.model import DeliveryStatus, NoticeState
from gateway.respond.sender import ChannelStats
from gateway.sink.forwarder import Forwarder
from gateway.sink.lineproto import LineEncoder
from gateway.sink.shedding import SHED_REASONS
from gateway.sink.spool import Spool
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


class GatewayCollector(Collector):
    def __init__(self, site: Site, exported: Exported, bus: Bus | None = None) -> None:
        self.site = site
        self.exported = exported
        self.bus = bus
        self.encoder = LineEncoder(site)

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        yield from self._info()
        yield from self._modbus()
        yield from self._devices(now)
        yield from self._mqtt(now)
        yield from self._sink(now)
        yield from self._bus()
        yield from self._incidents()
        yield from self._notify(now)
        yield from self._glitches()
        yield from self._store()

    def _info(self) -> Iterator[Metric]:
        info = InfoMetricFamily("meterwatch_build", "meterwatch version and site")
        info.add_metric([], {"version": _version(), "site": self.site.config.site.id})
        yield info

    # -- Modbus lines and devices -------------------------------------------------------------------------
    def _modbus(self) -> Iterator[Metric]:
        lines = self.exported.lines.values()
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
        for ls in lines:
            req.add_metric([ls.line, ls.transport], ls.requests)
            for kind, n in _with_zeros(ls.errors, LINE_ERROR_KINDS):
                err.add_metric([ls.line, kind], n)
            conn.add_metric([ls.line], 1.0 if ls.connected else 0.0)
            rec.add_metric([ls.line], ls.reconnects)
            cyc.add_metric([ls.line], ls.last_cycle_seconds)
        yield from (req, err, conn, rec, cyc)

    def _devices(self, now: float) -> Iterator[Metric]:
        polled = {d.device: d for d in self.exported.devices.values()}
        view = self.exported.presence
        where = ("device", "building", "source")
        on_line = ("device", "line")
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
            *on_line,
        )
        samples = _counter("meterwatch_device_samples", "samples published for a device", "device", "source")
        configured = {d.id: d for d in self.site.config.devices}
        for dev_id in sorted(set(configured) | set(polled)):
            cfg = configured.get(dev_id)
            building = cfg.building if cfg else ""
            source = cfg.source if cfg else "modbus"
            st = polled.get(dev_id)
            seen = view.devices.get(dev_id) if view is not None else None
            if st is not None:
                is_up = st.up
                last_ok = st.last_success
            else:
                is_up = view.up(dev_id, now) if view is not None else False
                last_ok = seen.last_sample if seen else None
            up.add_metric([dev_id, building, source], 1.0 if is_up else 0.0)
            if last_ok is not None:
                last.add_metric([dev_id, building, source], last_ok)
            if st is not None:
                req.add_metric([dev_id, st.line], st.requests)
                for kind, n in _with_zeros(st.errors, DEVICE_ERROR_KINDS):
                    err.add_metric([dev_id, st.line, kind], n)
                _add_hist(rtt, [dev_id, st.line], st.rtt)
                cycles.add_metric([dev_id, st.line], st.cycles)
                skipped.add_metric([dev_id, st.line], st.skipped_cycles)
                samples.add_metric([dev_id, source], st.samples)
            elif seen is not None:
                samples.add_metric([dev_id, source], seen.samples)
        yield from (up, last, req, err, rtt, cycles, skipped, samples)
        if view is not None:
            yield self._device_info(view)

    @staticmethod
    def _device_info(view: DevicePresence) -> Metric:
        info = InfoMetricFamily(
            "meterwatch_device",
            "what a device says about itself (serial number, firmware)",
            labels=["device"],
        )
        for dev_id, seen in sorted(view.devices.items()):
            if seen.info:
                fields = {
                    (f"info_{k}" if k in ("device", "instance", "job") else k): v
                    for k, v in seen.info.items()
                }
                info.add_metric([dev_id], fields)
        return info

    # -- MQTT -------------------------------------------------------------------------------------------
    def _mqtt(self, now: float) -> Iterator[Metric]:
        all_stats = self.exported.mqtt
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
    def _sink(self, now: float) -> Iterator[Metric]:
        fw = self.exported.sink
        yield _one_gauge(
            "meterwatch_sink_configured",
            "1 when the site has an influx section (samples are stored)",
            0.0 if fw is None else 1.0,
        )
        if fw is None:
            return
        s, b = fw.stats, fw.buffer.stats
        mode = "durable" if fw.buffer.durable else "best_effort"
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
            fw.dead.counts,
            ("rejected", "too_large"),
        )
        for name, doc, value in (
            ("meterwatch_spool_points", "points waiting in the spool", b.points),
            ("meterwatch_spool_bytes", "bytes waiting in the spool", b.bytes),
        ):
            per_mode = _gauge(name, doc, "mode")
            per_mode.add_metric([mode], value)
            yield per_mode
        yield _one_gauge("meterwatch_spool_max_bytes", "the spool's byte bound", fw.buffer.max_bytes)
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
            {**fw.storage.shed, "queue_full": fw.sub.dropped},
            SHED_REASONS,
        )
        yield shed
        free = fw.buffer.disk_free() if isinstance(fw.buffer, Spool) else None
        if free is not None:
            yield _one_gauge(
                "meterwatch_spool_disk_free_bytes", "free bytes on the spool's file system", float(free)
            )
        yield _one_counter(
            "meterwatch_sink_values_skipped",
            "NaN or infinite values line protocol cannot carry",
            self.encoder.skipped_values,
        )

    def _bus(self) -> Iterator[Metric]:
        if self.bus is None:
            return
        pub = _one_counter(
            "meterwatch_bus_published", "events published on the internal bus", self.bus.published
        )
        depth = _gauge("meterwatch_bus_queue_events", "events waiting per subscriber", "subscriber")
        dropped = _counter(
            "meterwatch_bus_dropped_events",
            "events a subscriber lost (best-effort ones; the sink sheds after a bounded wait)",
            "subscriber",
        )
        for sub in self.bus.subscriptions:
            depth.add_metric([sub.name], sub.queue.qsize())
            dropped.add_metric([sub.name], sub.dropped)
        yield from (pub, depth, dropped)

    # -- incidents --------------------------------------------------------------------------------------
    def _notify(self, now: float) -> Iterator[Metric]:
        """Notices by channel and state, target results, failing channels, the outbox's depth and age."""
        if self.exported.outbox is None:
            return
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
        for name, st in sorted(self.exported.channels.items()):
            for state in NoticeState:
                notices.add_metric([name, str(state)], st.notices.get(str(state), 0))
            for status in DeliveryStatus:
                targets.add_metric([name, str(status)], st.deliveries.get(str(status), 0))
            failing.add_metric([name], 1.0 if st.failing else 0.0)
            if st.last_success is not None:
                last.add_metric([name], st.last_success)
        depth, oldest = self.exported.outbox.depth()
        yield from (notices, targets, failing, last)
        yield _one_gauge("meterwatch_outbox_notices", "notice rows not yet delivered", depth)
        yield _one_gauge(
            "meterwatch_outbox_oldest_age_seconds",
            "age of the oldest notice row not yet delivered (0 when none)",
            0.0 if oldest is None else max(0.0, now - oldest),
        )

    def _incidents(self) -> Iterator[Metric]:
        if self.exported.incidents is None:
            return
        incidents = self.exported.incidents.open_incidents()
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
            category, scope = str(inc.category), str(inc.scope)
            per_key[(category, scope)] = per_key.get((category, scope), 0) + 1
            each.add_metric([str(inc.id), category, scope, str(inc.severity), self._building_of(scope)], 1.0)
        for (category, scope), n in sorted(per_key.items()):
            counts.add_metric([category, scope], n)
        yield from (counts, each, drills)

    def _glitches(self) -> Iterator[Metric]:
        engine = getattr(self.exported.incidents, "engine", None)
        if not isinstance(engine, Engine):
            return
        fam = _counter(
            "meterwatch_rule_glitches",
            "readings that showed a rule's trigger which the next reading cleared (a glitch: no alert)",
            "device",
            "rule",
        )
        for (device, rule), n in sorted(dict(engine.glitches).items()):
            fam.add_metric([device, rule], n)
        yield fam

    def _store(self) -> Iterator[Metric]:
        """The incident store's size, its retention and the evidence kept with incidents."""
        path = self.exported.incident_store
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
        ret = self.exported.retention
        if ret is not None:
            yield _one_counter(
                "meterwatch_incidents_pruned",
                "resolved incidents deleted past review.retention, with everything of theirs",
                ret.pruned.incidents,
            )
            rows = _counter(
                "meterwatch_incident_store_pruned_rows", "rows deleted by the retention, by table", "table"
            )
            for table, n in asdict(ret.pruned).items():
                rows.add_metric([table], n)
            yield rows
            yield _one_counter(
                "meterwatch_incident_store_prune_failures", "prunings that failed (tried again)", ret.failures
            )
            if ret.last_run is not None:
                yield _one_gauge(
                    "meterwatch_incident_store_last_prune_timestamp_seconds",
                    "when the retention last pruned the incident store",
                    ret.last_run,
                )
        ev = self.exported.evidence
        if ev is not None:
            yield _one_counter(
                "meterwatch_evidence_points",
                "readings stored with incidents as their evidence",
                ev.points_stored,
            )
            yield _one_counter(
                "meterwatch_evidence_thinned_points",
                "readings not kept (or dropped later) to hold an incident's evidence within max_points",
                ev.points_thinned,
            )
            yield _one_gauge(
                "meterwatch_evidence_incidents",
                "incidents whose evidence is being collected",
                len(ev.tracked),
            )
            yield _one_gauge(
                "meterwatch_evidence_ring_readings",
                "readings held in memory for the evidence of incidents yet to open",
                ev.ring_readings(),
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


def make_registry(site: Site, exported: Exported, bus: Bus | None = None) -> CollectorRegistry:
    """A registry of our own (not the global one): the gateway's collector plus process and platform."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GatewayCollector(site, exported, bus))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg
