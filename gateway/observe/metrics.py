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
  annotations.
- presence: gateway/observe/presence.py, so that `meterwatch_device_up` exists for every device of the
  site, also those no poller keeps stats for, and `meterwatch_device_info{device, <field>="text"} 1`
  (serial number, firmware version; a field named like a fixed label gets an `info_` prefix).

Naming: prefix meterwatch_, base units (seconds, bytes), counters end in _total.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
from gateway.observe.presence import DevicePresence
from gateway.sink.forwarder import Forwarder
from gateway.sink.lineproto import LineEncoder
from rules.model import Incident

# Error kinds always exposed (at 0 until they happen), so rate() and alerts see a series from the start.
LINE_ERROR_KINDS = ("timeout", "connection", "crc", "framing")
DEVICE_ERROR_KINDS = (*LINE_ERROR_KINDS, "decode", "nan", "not_available")


def _with_zeros(counts: dict[str, int], kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    return sorted({**dict.fromkeys(kinds, 0), **counts}.items())


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add_hist(fam: HistogramMetricFamily, values: list[str], h: Histogram) -> None:
    buckets = [("+Inf" if b == float("inf") else repr(float(b)), float(c)) for b, c in h.cumulative()]
    fam.add_metric(values, buckets, sum_value=h.total)


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

    def _info(self) -> Iterator[Metric]:
        info = InfoMetricFamily("meterwatch_build", "meterwatch version and site")
        info.add_metric([], {"version": _version(), "site": self.site.config.site.id})
        yield info

    # -- Modbus lines and devices -------------------------------------------------------------------------
    def _modbus(self) -> Iterator[Metric]:
        lines = self.exported.lines.values()
        req = CounterMetricFamily(
            "meterwatch_modbus_line_requests", "Modbus requests sent on a line", labels=["line", "transport"]
        )
        err = CounterMetricFamily(
            "meterwatch_modbus_line_errors",
            "failed Modbus requests on a line, by kind (timeout, connection, crc, framing, exception_<code>)",
            labels=["line", "kind"],
        )
        conn = GaugeMetricFamily(
            "meterwatch_modbus_line_connected", "1 when the line's link is up", labels=["line"]
        )
        rec = CounterMetricFamily(
            "meterwatch_modbus_line_reconnects", "reconnections of a line", labels=["line"]
        )
        cyc = GaugeMetricFamily(
            "meterwatch_modbus_line_cycle_seconds", "duration of the line's last poll cycle", labels=["line"]
        )
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
        labels = ["device", "building", "source"]
        up = GaugeMetricFamily(
            "meterwatch_device_up", "1 when the device answers (or publishes) as expected", labels=labels
        )
        last = GaugeMetricFamily(
            "meterwatch_device_last_success_timestamp_seconds",
            "when the device last answered (Unix time)",
            labels=labels,
        )
        req = CounterMetricFamily(
            "meterwatch_device_requests", "Modbus requests to a device", labels=["device", "line"]
        )
        err = CounterMetricFamily(
            "meterwatch_device_errors",
            "failed requests or values of a device, by kind "
            "(timeout, crc, exception_<code>, decode, nan, not_available)",
            labels=["device", "line", "kind"],
        )
        rtt = _histogram(
            "meterwatch_device_request_duration_seconds", "Modbus request round-trip time", ["device", "line"]
        )
        cycles = CounterMetricFamily(
            "meterwatch_device_poll_cycles", "poll cycles run", labels=["device", "line"]
        )
        skipped = CounterMetricFamily(
            "meterwatch_device_skipped_cycles",
            "poll cycles skipped because the previous one overran its interval",
            labels=["device", "line"],
        )
        samples = CounterMetricFamily(
            "meterwatch_device_samples", "samples published for a device", labels=["device", "source"]
        )
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
        conn = GaugeMetricFamily(
            "meterwatch_mqtt_connected", "1 when connected to the broker", labels=["source"]
        )
        msgs = CounterMetricFamily("meterwatch_mqtt_messages", "MQTT messages received", labels=["source"])
        dec = CounterMetricFamily(
            "meterwatch_mqtt_decode_errors",
            "MQTT messages skipped, by cause (json, nan, unknown_device, unknown_topic, ...)",
            labels=["source", "cause"],
        )
        rec = CounterMetricFamily(
            "meterwatch_mqtt_reconnects", "reconnections to the broker", labels=["source"]
        )
        age = GaugeMetricFamily(
            "meterwatch_mqtt_last_message_age_seconds",
            "seconds since the last MQTT message",
            labels=["source"],
        )
        for st in all_stats:
            conn.add_metric([st.source], 1.0 if st.connected else 0.0)
            msgs.add_metric([st.source], st.messages)
            for cause, n in sorted(st.decode_errors.items()):
                dec.add_metric([st.source, cause], n)
            rec.add_metric([st.source], st.reconnects)
            if st.last_message is not None:
                age.add_metric([st.source], max(0.0, now - st.last_message))
        yield from (conn, msgs, dec, rec, age)

    # -- the sink and the spool -------------------------------------------------------------------------
    def _sink(self, now: float) -> Iterator[Metric]:
        fw = self.exported.sink
        configured = GaugeMetricFamily(
            "meterwatch_sink_configured", "1 when the site has an influx section (samples are stored)"
        )
        configured.add_metric([], 0.0 if fw is None else 1.0)
        yield configured
        if fw is None:
            return
        s, b = fw.stats, fw.buffer.stats
        mode = "durable" if fw.buffer.durable else "best_effort"

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            return c

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            return g

        yield counter("meterwatch_sink_samples_received", "samples the sink took from the bus", s.samples_in)
        yield counter("meterwatch_sink_points_written", "points InfluxDB accepted", s.points_written)
        yield counter("meterwatch_sink_write_requests", "write requests sent to InfluxDB", s.write_requests)
        errs = CounterMetricFamily(
            "meterwatch_sink_write_errors",
            "failed write requests by outcome (retry, too_large, rejected, config, unreachable)",
            labels=["kind"],
        )
        for kind in ("retry", "too_large", "rejected", "config", "unreachable"):
            errs.add_metric([kind], s.write_errors.get(kind, 0))
        yield errs
        lat = _histogram("meterwatch_sink_write_duration_seconds", "duration of one write request", [])
        _add_hist(lat, [], s.write_latency)
        yield lat
        yield gauge(
            "meterwatch_sink_reachable", "1 when InfluxDB answered the last request", float(s.reachable)
        )
        yield gauge(
            "meterwatch_sink_auth_error",
            "HTTP status (401, 403, 404) while InfluxDB refuses our token, org or bucket; 0 when fine",
            float(s.config_error),
        )
        if s.last_success is not None:
            yield gauge(
                "meterwatch_sink_last_success_timestamp_seconds",
                "time of the last accepted write",
                s.last_success,
            )
        dl = CounterMetricFamily(
            "meterwatch_sink_dead_letter_points", "points moved to the dead-letter file", labels=["reason"]
        )
        for reason in ("rejected", "too_large"):
            dl.add_metric([reason], fw.dead.counts.get(reason, 0))
        yield dl
        depth = GaugeMetricFamily("meterwatch_spool_points", "points waiting in the spool", labels=["mode"])
        depth.add_metric([mode], b.points)
        yield depth
        size = GaugeMetricFamily("meterwatch_spool_bytes", "bytes waiting in the spool", labels=["mode"])
        size.add_metric([mode], b.bytes)
        yield size
        yield gauge("meterwatch_spool_max_bytes", "the spool's byte bound", fw.buffer.max_bytes)
        yield gauge(
            "meterwatch_spool_oldest_age_seconds",
            "age of the oldest point waiting in the spool (0 when empty)",
            max(0.0, now - b.oldest_enqueued) if b.oldest_enqueued is not None else 0.0,
        )
        drops = CounterMetricFamily(
            "meterwatch_spool_dropped_points",
            "points dropped past the spool's bound, by reason",
            labels=["reason"],
        )
        for reason in ("bytes", "age"):
            drops.add_metric([reason], b.dropped.get(reason, 0))
        yield drops
        yield counter("meterwatch_spool_commits", "spool transactions (one per batch)", b.commits)
        yield counter("meterwatch_spool_quarantined", "corrupt spool files moved aside", b.quarantined)
        yield counter("meterwatch_spool_append_errors", "failed spool appends (retried)", s.spool_errors)
        yield counter(
            "meterwatch_sink_values_skipped",
            "NaN or infinite values line protocol cannot carry",
            self.encoder.skipped_values,
        )

    def _bus(self) -> Iterator[Metric]:
        if self.bus is None:
            return
        pub = CounterMetricFamily("meterwatch_bus_published", "events published on the internal bus")
        pub.add_metric([], self.bus.published)
        depth = GaugeMetricFamily(
            "meterwatch_bus_queue_events", "events waiting per subscriber", labels=["subscriber"]
        )
        dropped = CounterMetricFamily(
            "meterwatch_bus_dropped_events", "events a best-effort subscriber lost", labels=["subscriber"]
        )
        for sub in self.bus.subscriptions:
            depth.add_metric([sub.name], sub.queue.qsize())
            dropped.add_metric([sub.name], sub.dropped)
        yield from (pub, depth, dropped)

    # -- incidents --------------------------------------------------------------------------------------
    def _incidents(self) -> Iterator[Metric]:
        if self.exported.incidents is None:
            return
        incidents = self.exported.incidents.open_incidents()
        counts = GaugeMetricFamily(
            "meterwatch_incidents_open", "open incidents by category and scope", labels=["category", "scope"]
        )
        each = GaugeMetricFamily(
            "meterwatch_incident_open",
            "1 for every open incident (Grafana annotations come from this series); building is empty for a "
            "site-wide scope",
            labels=["incident_id", "category", "scope", "severity", "building"],
        )
        per_key: dict[tuple[str, str], int] = {}
        for inc in incidents:
            category, scope = str(inc.category), str(inc.scope)
            per_key[(category, scope)] = per_key.get((category, scope), 0) + 1
            each.add_metric([str(inc.id), category, scope, str(inc.severity), self._building_of(scope)], 1.0)
        for (category, scope), n in sorted(per_key.items()):
            counts.add_metric([category, scope], n)
        yield from (counts, each)

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
