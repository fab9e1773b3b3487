"""The Grafana dashboards that ship in deploy/grafana/dashboards/, generated from code so they cannot drift.

    python -m gateway.tools.dashboards --write deploy/grafana/dashboards    # regenerate
    python -m gateway.tools.dashboards --check deploy/grafana/dashboards    # exit 1 when a file is stale

Where the names come from:
- measurements and fields: gateway/sink/lineproto.py (the writer's only naming rules) applied to the built-in
  profiles, so a panel asks for a quantity only if some profile produces it and the writer stores it there;
- datasource uids: DATASOURCES below, the same uids deploy/grafana/provisioning/datasources/ declares;
- Prometheus metric names: the ones gateway/observe/metrics.py exposes (checked one by one in
  tests/gateway/tools/test_dashboards.py).

"Building utilities" reads InfluxDB (Flux) per building (a variable filled from Prometheus' device labels),
shows devices up/down from Prometheus and open incidents as annotations (meterwatch_incident_open).
"Gateway health" reads Prometheus only: Modbus round trips and errors, MQTT, the sink and the spool.
"Fleet" reads InfluxDB (Flux) only, for many compounds writing to one central store: per site (a multi-select
variable filled from the store's `site` tag, all by default) supply voltage, zone pressure, flow, devices
reporting against devices seen in a day, the share of samples not good, and the sites worst first. It needs
no gateway's Prometheus, which a central Grafana cannot reach. "Main meters" are not a tag the writer
stores (a device's role is not written), so the voltage panels take every power meter of a site; a meter
at 0 V that still reports pulls its site's lowest voltage to 0.
"Fleet (VictoriaMetrics)" (fleet-victoriametrics.json) is the same dashboard for a central VictoriaMetrics,
which has no Flux: the same panels and site variable in PromQL (one MetricsQL function, count_gt_over_time,
where PromQL cannot count raw samples above a value) on a Prometheus-type datasource pointed at it
(VICTORIA_UID, provisioned by deploy/grafana/provisioning/datasources/fleet-victoriametrics.yaml).
VictoriaMetrics stores field f of measurement m as the metric `m_f` with the tags as labels, so every series
name comes from lineproto.series_name. Its tables are instant queries at the range's end, one per column,
merged by site in Grafana. tests/gateway/tools/test_dashboards_victoria.py runs each of its queries on a real
VictoriaMetrics holding points the gateway's own encoder wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.profile import Profile, builtin_profiles
from gateway.sink.lineproto import (
    MEASUREMENTS,
    QUALITY_FIELD,
    measurement_for_profile,
    produced_fields,
    series_name,
)

INFLUX_UID = "meterwatch-influxdb"
PROMETHEUS_UID = "meterwatch-prometheus"
VICTORIA_UID = "meterwatch-victoriametrics"  # Grafana's Prometheus type, pointed at VictoriaMetrics
DATASOURCES: dict[str, str] = {
    INFLUX_UID: "influxdb",
    PROMETHEUS_UID: "prometheus",
    VICTORIA_UID: "prometheus",
}
BUCKET = "meterwatch"  # the default of InfluxConfig.bucket; a dashboard variable, so one edit changes it

# Grafana unit ids for the profiles' units; anything else is shown with the unit as a suffix.
GRAFANA_UNITS: dict[str, str] = {
    "V": "volt",
    "A": "amp",
    "W": "watt",
    "kW": "kwatt",
    "bar": "pressurebar",
    "kPa": "pressurekpa",
    "Hz": "hertz",
    "kWh": "kwatth",
    "m3": "m3",
}


def grafana_unit(unit: str) -> str:
    return GRAFANA_UNITS.get(unit, f"suffix:{unit.replace('m3', 'm³')}" if unit else "none")


# ---------------------------------------------------------------------------------------------------------
# what the writer produces


@dataclass(frozen=True)
class Quantity:
    measurement: str
    field: str
    unit: str


def catalogue(profiles: Iterable[Profile]) -> dict[str, Quantity]:
    """field -> where the writer stores it and its unit, for every quantity of these profiles."""
    out: dict[str, Quantity] = {}
    profiles = list(profiles)
    fields = produced_fields(profiles)
    for prof in profiles:
        m = measurement_for_profile(prof)
        for p in prof.points:
            if p.quantity in fields[m]:
                out.setdefault(p.quantity, Quantity(m, p.quantity, p.unit or ""))
    return out


def phase_fields(cat: dict[str, Quantity], prefix: str) -> list[str]:
    """voltage_l1, voltage_l2, voltage_l3 (not the line-to-line voltage_l1_l2)."""
    return sorted(f for f in cat if re.fullmatch(rf"{prefix}_l[1-3]", f))


# ---------------------------------------------------------------------------------------------------------
# panel builders


class Layout:
    """Places panels on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {
            "type": "row",
            "title": title,
            "id": self._id(),
            "collapsed": False,
            "panels": [],
            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
        }
        self.y += 1
        return panel

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _ds(uid: str) -> dict[str, str]:
    return {"type": DATASOURCES[uid], "uid": uid}


def flux(measurement: str, fields: list[str]) -> str:
    field_filter = " or ".join(f'r._field == "{f}"' for f in fields)
    return (
        'from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}" and r.building == "${{building}}")\n'
        f"  |> filter(fn: (r) => {field_filter})\n"
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        '  |> keep(columns: ["_time", "_value", "_field", "device"])'
    )


@dataclass(frozen=True)
class Influx:
    """A time series panel of quantities the writer stores in one measurement."""

    title: str
    quantities: tuple[Quantity, ...]
    w: int = 12
    h: int = 8


def influx_panel(layout: Layout, spec: Influx) -> dict[str, Any]:
    measurements = {x.measurement for x in spec.quantities}
    assert len(measurements) == 1, f"one measurement per panel, got {measurements}"
    units = {x.unit for x in spec.quantities}
    return {
        "type": "timeseries",
        "title": spec.title,
        "id": layout._id(),
        "gridPos": layout.place(spec.w, spec.h),
        "datasource": _ds(INFLUX_UID),
        "fieldConfig": {
            "defaults": {
                "unit": grafana_unit(units.pop()) if len(units) == 1 else "none",
                "displayName": "${__field.labels.device} ${__field.labels._field}",
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": "A",
                "datasource": _ds(INFLUX_UID),
                "query": flux(measurements.pop(), [x.field for x in spec.quantities]),
            }
        ],
    }


@dataclass(frozen=True)
class Prom:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A Prometheus panel: its queries, one target each (refId A, B, ...)."""

    title: str
    queries: tuple[Prom, ...]
    unit: str = "short"
    kind: str = "timeseries"
    w: int = 12
    h: int = 8
    description: str = ""


def prom_panel(layout: Layout, spec: Panel) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": spec.kind,
        "title": spec.title,
        "id": layout._id(),
        "gridPos": layout.place(spec.w, spec.h),
        "datasource": _ds(PROMETHEUS_UID),
        "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": _ds(PROMETHEUS_UID),
                "expr": q.expr,
                "legendFormat": q.legend or "__auto",
            }
            for i, q in enumerate(spec.queries)
        ],
    }
    if spec.description:
        panel["description"] = spec.description
    if spec.kind == "state-timeline":
        panel["fieldConfig"]["defaults"]["mappings"] = [
            {
                "type": "value",
                "options": {
                    "0": {"text": "down", "color": "red", "index": 0},
                    "1": {"text": "up", "color": "green", "index": 1},
                },
            }
        ]
        panel["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
        panel["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
        }
    return panel


def lay_out(table: Iterable[str | Influx | Panel]) -> list[dict[str, Any]]:
    """The panels of a dashboard table, in order: a string starts a row of that title."""
    layout = Layout()
    out: list[dict[str, Any]] = []
    for item in table:
        if isinstance(item, str):
            out.append(layout.row(item))
        elif isinstance(item, Influx):
            out.append(influx_panel(layout, item))
        else:
            out.append(prom_panel(layout, item))
    return out


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["meterwatch"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
        "templating": {"list": extra.pop("variables", [])},
        "annotations": {"list": extra.pop("annotations", [])},
        **extra,
    }


RATE = "$__rate_interval"


def rate_by(label: str, metric: str, fn: str = "rate") -> str:
    """sum by (label) (rate(metric[$__rate_interval]))"""
    return f"sum by ({label}) ({fn}({metric}[{RATE}]))"


def quantiles(bucket: str, by: str = "") -> tuple[Prom, ...]:
    """p50 and p95 of a histogram, one series per value of the label `by` when given."""
    le = f"le, {by}" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Prom(f"histogram_quantile({q}, sum by ({le}) (rate({bucket}[{RATE}])))", f"{legend}{p}")
        for q, p in (("0.5", "p50"), ("0.95", "p95"))
    )


# ---------------------------------------------------------------------------------------------------------
# the building and gateway dashboards


def building_utilities(profiles: Iterable[Profile]) -> dict[str, Any]:
    cat = catalogue(profiles)
    sel = 'building="$building"'
    panels = lay_out(
        [
            "Power",
            Influx("Phase voltages", tuple(cat[f] for f in phase_fields(cat, "voltage"))),
            Influx("Phase currents", tuple(cat[f] for f in phase_fields(cat, "current"))),
            Influx("Active power", (cat["power_total"],)),
            Influx("Frequency", (cat["frequency"],)),
            "Water",
            Influx("Pressure", (cat["pressure"],)),
            Influx("Flow", (cat["flow"],)),
            "Devices",
            Panel("Devices up", (Prom(f"sum(meterwatch_device_up{{{sel}}})", "up"),), kind="stat", w=6),
            Panel(
                "Devices down",
                (Prom(f"count(meterwatch_device_up{{{sel}}}) - sum(meterwatch_device_up{{{sel}}})", "down"),),
                kind="stat",
                w=6,
            ),
            Panel(
                "Open incidents",
                (Prom('count(meterwatch_incident_open{building=~"$building|"}) or vector(0)', "open"),),
                kind="stat",
                w=12,
                description="incidents of this building and site-wide ones",
            ),
            Panel(
                "Device up/down",
                (Prom(f"meterwatch_device_up{{{sel}}}", "{{device}}"),),
                kind="state-timeline",
                w=24,
                h=10,
            ),
        ]
    )
    variables = [
        {
            "name": "building",
            "label": "Building",
            "type": "query",
            "datasource": _ds(PROMETHEUS_UID),
            "query": {"query": "label_values(meterwatch_device_up, building)", "refId": "building"},
            "definition": "label_values(meterwatch_device_up, building)",
            "refresh": 2,
            "sort": 1,
            "includeAll": False,
            "multi": False,
        },
        {
            "name": "bucket",
            "label": "InfluxDB bucket",
            "type": "constant",
            "query": BUCKET,
            "hide": 2,
        },
    ]
    annotations = [
        {
            "name": "Incidents",
            "enable": True,
            "iconColor": "red",
            "datasource": _ds(PROMETHEUS_UID),
            "expr": 'meterwatch_incident_open{building=~"$building|"}',
            "step": "15s",
            "titleFormat": "{{category}} ({{severity}})",
            "textFormat": "incident {{incident_id}}: {{scope}}",
            "tagKeys": "category,severity",
            "useValueForTime": False,
        }
    ]
    return dashboard(
        "meterwatch-building",
        "Building utilities",
        panels,
        variables=variables,
        annotations=annotations,
        description="Per building: power and water readings from InfluxDB, device liveness and incidents "
        "from the gateway's Prometheus metrics.",
    )


def gateway_health() -> dict[str, Any]:
    panels = lay_out(
        [
            "Modbus",
            Panel(
                "Round trip by line (p50, p95)",
                quantiles("meterwatch_device_request_duration_seconds_bucket", by="line"),
                unit="s",
            ),
            Panel(
                "Requests per second by line",
                (Prom(rate_by("line", "meterwatch_modbus_line_requests_total"), "{{line}}"),),
                unit="reqps",
            ),
            Panel(
                "Errors per second by kind",
                (Prom(rate_by("kind", "meterwatch_device_errors_total"), "{{kind}}"),),
                unit="reqps",
                description="timeout, connection, crc, framing, wrong_unit, wrong_function, stale (an answer "
                "to an earlier request), exception_<code>, decode, nan",
            ),
            Panel(
                "Errors per second by device",
                (Prom(rate_by("device", "meterwatch_device_errors_total") + " > 0", "{{device}}"),),
                unit="reqps",
            ),
            Panel(
                "Skipped poll cycles per second",
                (Prom(rate_by("device", "meterwatch_device_skipped_cycles_total") + " > 0", "{{device}}"),),
                description="a cycle that overran its interval and was skipped, not queued",
            ),
            Panel(
                "Line connected",
                (Prom("meterwatch_modbus_line_connected", "{{line}}"),),
                kind="state-timeline",
            ),
            Panel(
                "Devices up / down",
                (
                    Prom("sum(meterwatch_device_up)", "up"),
                    Prom("count(meterwatch_device_up) - sum(meterwatch_device_up)", "down"),
                ),
            ),
            Panel(
                "Line cycle duration", (Prom("meterwatch_modbus_line_cycle_seconds", "{{line}}"),), unit="s"
            ),
            "MQTT",
            Panel(
                "Messages per second",
                (Prom(rate_by("source", "meterwatch_mqtt_messages_total"), "{{source}}"),),
                w=8,
            ),
            Panel(
                "Decode errors per second",
                (Prom(rate_by("cause", "meterwatch_mqtt_decode_errors_total"), "{{cause}}"),),
                w=8,
            ),
            Panel(
                "Last message age",
                (Prom("meterwatch_mqtt_last_message_age_seconds", "{{source}}"),),
                unit="s",
                w=8,
            ),
            "Sink and spool",
            Panel(
                "Write latency (p50, p95)",
                quantiles("meterwatch_sink_write_duration_seconds_bucket"),
                unit="s",
            ),
            Panel(
                "Points written and write errors per second",
                (
                    Prom(f"rate(meterwatch_sink_points_written_total[{RATE}])", "points written"),
                    Prom(rate_by("kind", "meterwatch_sink_write_errors_total") + " > 0", "errors: {{kind}}"),
                ),
            ),
            Panel("Spool depth", (Prom("meterwatch_spool_points", "points ({{mode}})"),), w=8),
            Panel(
                "Spool bytes",
                (
                    Prom("meterwatch_spool_bytes", "bytes ({{mode}})"),
                    Prom("meterwatch_spool_max_bytes", "bound"),
                ),
                unit="bytes",
                w=8,
            ),
            Panel(
                "Oldest spooled point", (Prom("meterwatch_spool_oldest_age_seconds", "age"),), unit="s", w=8
            ),
            Panel(
                "Spool drops by reason",
                (Prom(rate_by("reason", "meterwatch_spool_dropped_points_total", "increase"), "{{reason}}"),),
            ),
            Panel(
                "InfluxDB reachable",
                (
                    Prom("meterwatch_sink_reachable", "reachable"),
                    Prom("meterwatch_sink_auth_error", "auth error (HTTP status)"),
                ),
            ),
            "Process",
            Panel(
                "CPU",
                (Prom(f'rate(process_cpu_seconds_total{{job=~"meterwatch.*"}}[{RATE}])', "cpu"),),
                unit="percentunit",
            ),
            Panel(
                "Resident memory",
                (Prom('process_resident_memory_bytes{job=~"meterwatch.*"}', "rss"),),
                unit="bytes",
            ),
        ]
    )
    return dashboard(
        "meterwatch-gateway",
        "Gateway health",
        panels,
        description="The gateway itself: Modbus round trips and errors, MQTT, writes to InfluxDB, the spool.",
    )


# ---------------------------------------------------------------------------------------------------------
# the fleet dashboard: many compounds writing to one central store

SITE_FILTER = "r.site =~ /^${site:regex}$/"  # a regex, not contains(): InfluxDB pushes it down to storage
RECENT = "5m"  # a device with a sample this close to the range's end is reporting
EXPECTED = "24h"  # a device with a sample this long before the range's end is expected to report
NO_SUPPLY_V = 50.0  # a meter that reports less sees no supply (its 230 V phases are out, not merely low)

# the site variable: every site that wrote in the last 30 days
SITES_QUERY = (
    'import "influxdata/influxdb/schema"\n\nschema.tagValues(bucket: "${bucket}", tag: "site", start: -30d)'
)


def site_flux(measurement: str, fields: list[str], per_site: str) -> str:
    """One series per site: each device's mean over `fields` (its phases) per window, then `per_site`
    (mean, min, sum) over the site's devices."""
    field_filter = " or ".join(f'r._field == "{f}"' for f in fields)
    return (
        'from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}" and {SITE_FILTER})\n'
        f"  |> filter(fn: (r) => {field_filter})\n"
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        '  |> group(columns: ["site", "device", "_time"])\n'
        "  |> mean()\n"
        '  |> group(columns: ["site", "_time"])\n'
        f"  |> {per_site}()\n"
        '  |> group(columns: ["site"])\n'
        '  |> sort(columns: ["_time"])\n'
        '  |> keep(columns: ["_time", "_value", "site"])'
    )


def quality_share_flux() -> str:
    """Share of samples per site whose quality is not 0 (good); every measurement carries `quality`."""
    return (
        'from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f"  |> filter(fn: (r) => {SITE_FILTER})\n"
        '  |> filter(fn: (r) => r._field == "quality")\n'
        "  |> map(fn: (r) => ({r with _value: if r._value != 0 then 1.0 else 0.0}))\n"
        '  |> group(columns: ["site"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        '  |> keep(columns: ["_time", "_value", "site"])'
    )


def reporting_flux() -> str:
    """Per site: devices whose last sample is at most RECENT old, against devices seen in EXPECTED."""
    return (
        'import "date"\n\n'
        f"recent = date.sub(d: {RECENT}, from: v.timeRangeStop)\n\n"
        'from(bucket: "${bucket}")\n'
        f"  |> range(start: date.sub(d: {EXPECTED}, from: v.timeRangeStop), stop: v.timeRangeStop)\n"
        f"  |> filter(fn: (r) => {SITE_FILTER})\n"
        '  |> filter(fn: (r) => r._field == "quality")\n'
        "  |> last()\n"  # one series per device (its measurement's quality field): pushed down to storage
        "  |> map(fn: (r) => ({r with up: if r._time >= recent then 1 else 0}))\n"
        '  |> group(columns: ["site"])\n'
        "  |> reduce(\n"
        "      identity: {reporting: 0, expected: 0},\n"
        "      fn: (r, accumulator) => ({reporting: accumulator.reporting + r.up, "
        "expected: accumulator.expected + 1}),\n"
        "  )\n"
        "  |> map(fn: (r) => ({site: r.site, reporting: r.reporting, expected: r.expected, "
        "missing: r.expected - r.reporting}))\n"
        "  |> group()\n"
        '  |> sort(columns: ["missing"], desc: true)'
    )


def latest_flux(name: str, measurement: str, fields: list[str]) -> str:
    """A stream of one row per site: the lowest, over its devices, of a device's latest mean of `fields`."""
    field_filter = " or ".join(f'r._field == "{f}"' for f in fields)
    return (
        f'{name} = from(bucket: "${{bucket}}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}" and {SITE_FILTER})\n'
        f"  |> filter(fn: (r) => {field_filter})\n"
        "  |> last()\n"
        '  |> group(columns: ["site", "device"])\n'
        "  |> mean()\n"
        '  |> group(columns: ["site"])\n'
        "  |> min()\n"
        f'  |> map(fn: (r) => ({{site: r.site, _field: "{name}", _value: r._value}}))\n'
    )


def dark_sites_flux(voltages: list[str]) -> str:
    """How many sites have a meter below NO_SUPPLY_V in its latest sample."""
    return (
        latest_flux("voltage", "power", voltages)
        + "\n"
        + f"voltage\n  |> filter(fn: (r) => r._value < {NO_SUPPLY_V})\n  |> group()\n  |> count()"
    )


def worst_sites_flux(voltages: list[str]) -> str:
    """Every site with its latest lowest main voltage and zone pressure, the lowest voltage first (0 V: an
    outage), then the lowest pressure. A site without one of them shows it empty."""
    return (
        latest_flux("voltage", "power", voltages)
        + "\n"
        + latest_flux("pressure", "pressure", ["pressure"])
        + "\n"
        "union(tables: [voltage, pressure])\n"
        "  |> group()\n"
        '  |> pivot(rowKey: ["site"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> sort(columns: ["voltage", "pressure"])'
    )


# The same dashboard over VictoriaMetrics (no Flux): PromQL on a Prometheus-type datasource. The store names
# field f of measurement m `m_f` (lineproto.series_name) and keeps the tags as labels. Grafana formats a
# multi-value variable in a regex matcher as (a|b), so `site=~"$site"` takes the selected sites.
SITE_MATCH = 'site=~"$site"'
NO_SUPPLY_V_TEXT = f"{NO_SUPPLY_V:g}"
# MetricsQL functions the VictoriaMetrics variant uses where PromQL has no exact equivalent (a count of the
# raw samples above a value); tests/gateway/tools/test_dashboards_victoria.py runs them on VictoriaMetrics.
METRICSQL_ONLY = frozenset({"count_gt_over_time"})


def selector(measurement: str, fields: list[str], match: str = SITE_MATCH) -> str:
    """The series of `fields` of `measurement` at the selected sites."""
    names = [series_name(measurement, f) for f in fields]
    if len(names) == 1:
        return f"{names[0]}{{{match}}}"
    return f'{{__name__=~"{"|".join(names)}", {match}}}'


def quality_selector() -> str:
    """Every measurement's `quality` series (each device writes one), at the selected sites."""
    names = "|".join(series_name(m, QUALITY_FIELD) for m in MEASUREMENTS)
    return f'{{__name__=~"{names}", {SITE_MATCH}}}'


def site_promql(measurement: str, fields: list[str], per_site: str) -> str:
    """As site_flux: each device's mean over `fields` per window, then `per_site` over the site's devices."""
    device = f"avg by (site, device) (avg_over_time({selector(measurement, fields)}[$__interval]))"
    return f"{per_site} by (site) ({device})"


def latest_promql(measurement: str, fields: list[str]) -> str:
    """As latest_flux: per site, the lowest over its devices of a device's latest mean of `fields`."""
    device = f"avg by (site, device) (last_over_time({selector(measurement, fields)}[$__range]))"
    return f"min by (site) ({device})"


def reporting_promql() -> tuple[str, str, str]:
    """As reporting_flux: devices with a sample in the last RECENT, devices seen in EXPECTED, the missing."""
    q = quality_selector()
    expected = f"count by (site) (last_over_time({q}[{EXPECTED}]))"
    reporting = f"count by (site) (last_over_time({q}[{RECENT}])) or {expected} * 0"  # a silent site: 0
    return f"{reporting}", expected, f"{expected} - ({reporting})"


def quality_share_promql() -> str:
    """As quality_share_flux: per site and window, samples with quality != 0 over all samples (MetricsQL's
    count_gt_over_time counts raw samples; quality is never negative)."""
    q = f"{quality_selector()}[$__interval]"
    return f"sum by (site) (count_gt_over_time({q}, 0)) / sum by (site) (count_over_time({q}))"


@dataclass(frozen=True)
class PromQuery:
    """One PromQL target of a fleet panel: over time (a range query per step) or at the range's end."""

    expr: str
    name: str = ""  # the column an instant query fills in a table
    instant: bool = False


@dataclass(frozen=True)
class FleetPanel:
    """A panel of the fleet dashboard, one series (or row) per site: its Flux query over InfluxDB and its
    PromQL queries over VictoriaMetrics (several for a table: one per column, merged by site)."""

    title: str
    query: str
    promql: tuple[PromQuery, ...]
    unit: str = "none"
    kind: str = "timeseries"
    w: int = 12
    h: int = 8
    description: str = ""
    thresholds: tuple[tuple[str, float | None], ...] = ()
    sort: str = ""  # a table's column to sort by (PromQL variant)
    sort_desc: bool = False


def _fleet_defaults(spec: FleetPanel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": spec.unit}
    if spec.kind == "stat":
        defaults["noValue"] = "0"  # count() of no rows is no table, not 0
    if spec.kind == "timeseries":
        defaults["displayName"] = "${__field.labels.site}"
    if spec.thresholds:
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for c, v in spec.thresholds],
        }
    return defaults


def fleet_panel(layout: Layout, spec: FleetPanel, uid: str = INFLUX_UID) -> dict[str, Any]:
    """The panel over InfluxDB (Flux) or, with uid VICTORIA_UID, over VictoriaMetrics (PromQL)."""
    targets: list[dict[str, Any]]
    if uid == INFLUX_UID:
        targets = [{"refId": "A", "datasource": _ds(uid), "query": spec.query}]
    else:
        targets = [_prom_target(spec, i, q) for i, q in enumerate(spec.promql)]
    panel: dict[str, Any] = {
        "type": spec.kind,
        "title": spec.title,
        "id": layout._id(),
        "gridPos": layout.place(spec.w, spec.h),
        "datasource": _ds(uid),
        "fieldConfig": {"defaults": _fleet_defaults(spec), "overrides": []},
        "targets": targets,
    }
    if spec.kind == "timeseries":
        panel["options"] = {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["min", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "asc"},
        }
    if uid != INFLUX_UID and spec.kind == "table":
        panel["transformations"] = _table_transformations(spec)
    if spec.description:
        panel["description"] = spec.description
    return panel


def _prom_target(spec: FleetPanel, i: int, q: PromQuery) -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": chr(ord("A") + i),
        "datasource": _ds(VICTORIA_UID),
        "expr": q.expr,
        "legendFormat": "{{site}}",
        "instant": q.instant,
        "range": not q.instant,
    }
    if spec.kind == "table":
        target["format"] = "table"
    return target


def _table_transformations(spec: FleetPanel) -> list[dict[str, Any]]:
    """Instant queries, one column each, as one row per site: merged on the site label, each `Value #X`
    named after its query, the time column hidden, sorted as the Flux variant sorts."""
    names = {f"Value #{chr(ord('A') + i)}": q.name for i, q in enumerate(spec.promql)}
    out: list[dict[str, Any]] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": names}},
    ]
    if spec.sort:
        out.append({"id": "sortBy", "options": {"sort": [{"field": spec.sort, "desc": spec.sort_desc}]}})
    return out


def fleet_panels(profiles: Iterable[Profile]) -> list[str | FleetPanel]:
    """The fleet dashboard's rows and panels, each with its query for both stores."""
    cat = catalogue(profiles)
    voltages = phase_fields(cat, "voltage")
    for f in (*voltages, "pressure", "flow"):
        assert f in cat, f"no built-in profile produces {f}"
    power, pressure, flow = cat[voltages[0]].measurement, cat["pressure"].measurement, cat["flow"].measurement
    volt = grafana_unit(cat[voltages[0]].unit)
    low_voltage = (("red", None), ("orange", 100.0), ("green", 195.0))  # 0 V: an outage; 230 V - 15 %
    reporting, expected, missing = reporting_promql()
    return [
        "Power",
        FleetPanel(
            "Mean phase voltage by site",
            site_flux(power, voltages, "mean"),
            (PromQuery(site_promql(power, voltages, "avg")),),
            unit=volt,
            description="mean of the phase voltages of every power meter of the site",
        ),
        FleetPanel(
            "Lowest meter voltage by site",
            site_flux(power, voltages, "min"),
            (PromQuery(site_promql(power, voltages, "min")),),
            unit=volt,
            thresholds=low_voltage,
            description="each meter's mean phase voltage, the lowest meter of the site: 0 V where a meter "
            "that still reports sees no supply",
        ),
        "Water",
        FleetPanel(
            "Lowest zone pressure by site",
            site_flux(pressure, ["pressure"], "min"),
            (PromQuery(site_promql(pressure, ["pressure"], "min")),),
            unit=grafana_unit(cat["pressure"].unit),
        ),
        FleetPanel(
            "Flow by site",
            site_flux(flow, ["flow"], "sum"),
            (PromQuery(site_promql(flow, ["flow"], "sum")),),
            unit=grafana_unit(cat["flow"].unit),
            description="sum of the site's flow meters",
        ),
        "Devices and data",
        FleetPanel(
            "Devices reporting",
            reporting_flux(),
            (
                PromQuery(reporting, "reporting", instant=True),
                PromQuery(expected, "expected", instant=True),
                PromQuery(missing, "missing", instant=True),
            ),
            kind="table",
            description=f"devices with a sample in the last {RECENT} of the range, against the devices that "
            f"wrote in the {EXPECTED} before its end; most missing first",
            sort="missing",
            sort_desc=True,
        ),
        FleetPanel(
            "Samples not good",
            quality_share_flux(),
            (PromQuery(quality_share_promql()),),
            unit="percentunit",
            thresholds=(("green", None), ("orange", 0.01), ("red", 0.1)),
            description="share of samples with quality != 0 (stale, comm_error, decode_error)",
        ),
        "Sites",
        FleetPanel(
            "Sites with a meter at 0 V",
            dark_sites_flux(voltages),
            (
                PromQuery(
                    f"count({latest_promql(power, voltages)} < {NO_SUPPLY_V_TEXT}) or vector(0)", instant=True
                ),
            ),
            kind="stat",
            w=4,
            h=12,
            thresholds=(("green", None), ("red", 1.0)),
            description=f"sites where a power meter's latest mean phase voltage is below {NO_SUPPLY_V:g} V",
        ),
        FleetPanel(
            "Sites, worst first",
            worst_sites_flux(voltages),
            (
                PromQuery(latest_promql(power, voltages), "voltage", instant=True),
                PromQuery(latest_promql(pressure, ["pressure"]), "pressure", instant=True),
            ),
            kind="table",
            w=20,
            h=12,
            description="latest lowest meter voltage and lowest zone pressure per site, the lowest voltage "
            "first (0 V: an outage), then the lowest pressure",
            sort="voltage",
        ),
    ]


FLEET_DESCRIPTION = (
    "Every compound writing to one central store, per site: supply voltage, zone pressure, flow, devices "
    "reporting, data quality, and the sites worst first."
)


def fleet(profiles: Iterable[Profile]) -> dict[str, Any]:
    layout = Layout()
    panels = [layout.row(x) if isinstance(x, str) else fleet_panel(layout, x) for x in fleet_panels(profiles)]
    variables = [
        {"name": "bucket", "label": "InfluxDB bucket", "type": "constant", "query": BUCKET, "hide": 2},
        {
            "name": "site",
            "label": "Site",
            "type": "query",
            "datasource": _ds(INFLUX_UID),
            "query": SITES_QUERY,
            "definition": SITES_QUERY,
            "refresh": 2,
            "sort": 1,
            "multi": True,
            "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        },
    ]
    return dashboard("meterwatch-fleet", "Fleet", panels, variables=variables, description=FLEET_DESCRIPTION)


def victoria_sites_query() -> str:
    """Every site with a series in the dashboard's range (Grafana's label_values over /api/v1/labels)."""
    names = "|".join(series_name(m, QUALITY_FIELD) for m in MEASUREMENTS)
    return f'label_values({{__name__=~"{names}"}}, site)'


def fleet_victoria(profiles: Iterable[Profile]) -> dict[str, Any]:
    """The Fleet dashboard over VictoriaMetrics: the same panels and site variable, in PromQL."""
    layout = Layout()
    panels = [
        layout.row(x) if isinstance(x, str) else fleet_panel(layout, x, VICTORIA_UID)
        for x in fleet_panels(profiles)
    ]
    sites = victoria_sites_query()
    variables = [
        {
            "name": "site",
            "label": "Site",
            "type": "query",
            "datasource": _ds(VICTORIA_UID),
            "query": {"query": sites, "refId": "site"},
            "definition": sites,
            "refresh": 2,
            "sort": 1,
            "multi": True,
            "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        },
    ]
    return dashboard(
        "meterwatch-fleet-victoriametrics",
        "Fleet (VictoriaMetrics)",
        panels,
        variables=variables,
        description=FLEET_DESCRIPTION,
    )


def render_all(profiles: Iterable[Profile] | None = None) -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    profs = list(profiles if profiles is not None else builtin_profiles().values())
    out = {
        "building-utilities.json": building_utilities(profs),
        "gateway-health.json": gateway_health(),
        "fleet.json": fleet(profs),
        "fleet-victoriametrics.json": fleet_victoria(profs),
    }
    return {name: json.dumps(d, indent=2, sort_keys=True) + "\n" for name, d in out.items()}


def stale(directory: Path) -> list[str]:
    """Files in `directory` that differ from what the generator makes now (missing ones included)."""
    out = []
    for name, text in render_all().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gateway.tools.dashboards", description=__doc__.split("\n")[0]
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="DIR", help="write the dashboards into DIR")
    mode.add_argument("--check", type=Path, metavar="DIR", help="exit 1 when a file in DIR is stale")
    args = ap.parse_args(argv)
    if args.check is not None:
        bad = stale(args.check)
        for name in bad:
            print(f"{args.check / name}: stale; run python -m gateway.tools.dashboards --write {args.check}")
        return 1 if bad else 0
    args.write.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (args.write / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.write / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
