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
from gateway.sink.lineproto import measurement_for_profile, produced_fields

INFLUX_UID = "meterwatch-influxdb"
PROMETHEUS_UID = "meterwatch-prometheus"
DATASOURCES: dict[str, str] = {INFLUX_UID: "influxdb", PROMETHEUS_UID: "prometheus"}
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


def influx_panel(layout: Layout, title: str, q: list[Quantity], w: int = 12, h: int = 8) -> dict[str, Any]:
    measurements = {x.measurement for x in q}
    assert len(measurements) == 1, f"one measurement per panel, got {measurements}"
    units = {x.unit for x in q}
    return {
        "type": "timeseries",
        "title": title,
        "id": layout._id(),
        "gridPos": layout.place(w, h),
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
                "query": flux(measurements.pop(), [x.field for x in q]),
            }
        ],
    }


@dataclass(frozen=True)
class Prom:
    expr: str
    legend: str = ""


def prom_panel(
    layout: Layout,
    title: str,
    queries: list[Prom],
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
    description: str = "",
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "id": layout._id(),
        "gridPos": layout.place(w, h),
        "datasource": _ds(PROMETHEUS_UID),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": _ds(PROMETHEUS_UID),
                "expr": q.expr,
                "legendFormat": q.legend or "__auto",
            }
            for i, q in enumerate(queries)
        ],
    }
    if description:
        panel["description"] = description
    if kind == "state-timeline":
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


# ---------------------------------------------------------------------------------------------------------
# the two dashboards


def building_utilities(profiles: Iterable[Profile]) -> dict[str, Any]:
    cat = catalogue(profiles)
    lay = Layout()
    sel = 'building="$building"'
    panels: list[dict[str, Any]] = [lay.row("Power")]
    panels.append(influx_panel(lay, "Phase voltages", [cat[f] for f in phase_fields(cat, "voltage")]))
    panels.append(influx_panel(lay, "Phase currents", [cat[f] for f in phase_fields(cat, "current")]))
    panels.append(influx_panel(lay, "Active power", [cat["power_total"]]))
    panels.append(influx_panel(lay, "Frequency", [cat["frequency"]]))
    panels.append(lay.row("Water"))
    panels.append(influx_panel(lay, "Pressure", [cat["pressure"]]))
    panels.append(influx_panel(lay, "Flow", [cat["flow"]]))
    panels.append(lay.row("Devices"))
    panels.append(
        prom_panel(lay, "Devices up", [Prom(f"sum(meterwatch_device_up{{{sel}}})", "up")], kind="stat", w=6)
    )
    panels.append(
        prom_panel(
            lay,
            "Devices down",
            [Prom(f"count(meterwatch_device_up{{{sel}}}) - sum(meterwatch_device_up{{{sel}}})", "down")],
            kind="stat",
            w=6,
        )
    )
    panels.append(
        prom_panel(
            lay,
            "Open incidents",
            [Prom('count(meterwatch_incident_open{building=~"$building|"}) or vector(0)', "open")],
            kind="stat",
            w=12,
            description="incidents of this building and site-wide ones",
        )
    )
    panels.append(
        prom_panel(
            lay,
            "Device up/down",
            [Prom(f"meterwatch_device_up{{{sel}}}", "{{device}}")],
            kind="state-timeline",
            w=24,
            h=10,
        )
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
    lay = Layout()
    p: list[dict[str, Any]] = [lay.row("Modbus")]
    rtt = "meterwatch_device_request_duration_seconds_bucket"
    p.append(
        prom_panel(
            lay,
            "Round trip by line (p50, p95)",
            [
                Prom(f"histogram_quantile(0.5, sum by (le, line) (rate({rtt}[{RATE}])))", "{{line}} p50"),
                Prom(f"histogram_quantile(0.95, sum by (le, line) (rate({rtt}[{RATE}])))", "{{line}} p95"),
            ],
            unit="s",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Requests per second by line",
            [Prom(f"sum by (line) (rate(meterwatch_modbus_line_requests_total[{RATE}]))", "{{line}}")],
            unit="reqps",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Errors per second by kind",
            [Prom(f"sum by (kind) (rate(meterwatch_device_errors_total[{RATE}]))", "{{kind}}")],
            unit="reqps",
            description="timeout, connection, crc, framing, exception_<code>, decode, nan",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Errors per second by device",
            [Prom(f"sum by (device) (rate(meterwatch_device_errors_total[{RATE}])) > 0", "{{device}}")],
            unit="reqps",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Skipped poll cycles per second",
            [
                Prom(
                    f"sum by (device) (rate(meterwatch_device_skipped_cycles_total[{RATE}])) > 0",
                    "{{device}}",
                )
            ],
            unit="short",
            description="a cycle that overran its interval and was skipped, not queued",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Line connected",
            [Prom("meterwatch_modbus_line_connected", "{{line}}")],
            kind="state-timeline",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Devices up / down",
            [
                Prom("sum(meterwatch_device_up)", "up"),
                Prom("count(meterwatch_device_up) - sum(meterwatch_device_up)", "down"),
            ],
        )
    )
    p.append(
        prom_panel(
            lay,
            "Line cycle duration",
            [Prom("meterwatch_modbus_line_cycle_seconds", "{{line}}")],
            unit="s",
        )
    )
    p.append(lay.row("MQTT"))
    p.append(
        prom_panel(
            lay,
            "Messages per second",
            [Prom(f"sum by (source) (rate(meterwatch_mqtt_messages_total[{RATE}]))", "{{source}}")],
            unit="short",
            w=8,
        )
    )
    p.append(
        prom_panel(
            lay,
            "Decode errors per second",
            [Prom(f"sum by (cause) (rate(meterwatch_mqtt_decode_errors_total[{RATE}]))", "{{cause}}")],
            unit="short",
            w=8,
        )
    )
    p.append(
        prom_panel(
            lay,
            "Last message age",
            [Prom("meterwatch_mqtt_last_message_age_seconds", "{{source}}")],
            unit="s",
            w=8,
        )
    )
    p.append(lay.row("Sink and spool"))
    wl = "meterwatch_sink_write_duration_seconds_bucket"
    p.append(
        prom_panel(
            lay,
            "Write latency (p50, p95)",
            [
                Prom(f"histogram_quantile(0.5, sum by (le) (rate({wl}[{RATE}])))", "p50"),
                Prom(f"histogram_quantile(0.95, sum by (le) (rate({wl}[{RATE}])))", "p95"),
            ],
            unit="s",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Points written and write errors per second",
            [
                Prom(f"rate(meterwatch_sink_points_written_total[{RATE}])", "points written"),
                Prom(
                    f"sum by (kind) (rate(meterwatch_sink_write_errors_total[{RATE}])) > 0",
                    "errors: {{kind}}",
                ),
            ],
            unit="short",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Spool depth",
            [Prom("meterwatch_spool_points", "points ({{mode}})")],
            unit="short",
            w=8,
        )
    )
    p.append(
        prom_panel(
            lay,
            "Spool bytes",
            [
                Prom("meterwatch_spool_bytes", "bytes ({{mode}})"),
                Prom("meterwatch_spool_max_bytes", "bound"),
            ],
            unit="bytes",
            w=8,
        )
    )
    p.append(
        prom_panel(
            lay,
            "Oldest spooled point",
            [Prom("meterwatch_spool_oldest_age_seconds", "age")],
            unit="s",
            w=8,
        )
    )
    p.append(
        prom_panel(
            lay,
            "Spool drops by reason",
            [
                Prom(
                    f"sum by (reason) (increase(meterwatch_spool_dropped_points_total[{RATE}]))", "{{reason}}"
                )
            ],
            unit="short",
        )
    )
    p.append(
        prom_panel(
            lay,
            "InfluxDB reachable",
            [
                Prom("meterwatch_sink_reachable", "reachable"),
                Prom("meterwatch_sink_auth_error", "auth error (HTTP status)"),
            ],
        )
    )
    p.append(lay.row("Process"))
    p.append(
        prom_panel(
            lay,
            "CPU",
            [Prom(f'rate(process_cpu_seconds_total{{job=~"meterwatch.*"}}[{RATE}])', "cpu")],
            unit="percentunit",
        )
    )
    p.append(
        prom_panel(
            lay,
            "Resident memory",
            [Prom('process_resident_memory_bytes{job=~"meterwatch.*"}', "rss")],
            unit="bytes",
        )
    )
    return dashboard(
        "meterwatch-gateway",
        "Gateway health",
        p,
        description="The gateway itself: Modbus round trips and errors, MQTT, writes to InfluxDB, the spool.",
    )


def render_all(profiles: Iterable[Profile] | None = None) -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    profs = list(profiles if profiles is not None else builtin_profiles().values())
    out = {
        "building-utilities.json": building_utilities(profs),
        "gateway-health.json": gateway_health(),
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
