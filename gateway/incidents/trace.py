"""Recorded traces -> events, for `meterwatch replay`.

Two formats:
- long CSV: `ts,device,quantity,value` (header required). Rows with the same ts and device form one Sample;
  an empty value means the device did not answer (a DeviceStatus down). `ts` is epoch seconds or ISO 8601;
  an ISO time without an offset is read in the site's time zone.
- wide CSV: one row per instant, one column per quantity, described by a mapping (YAML file or dict):
      separator: ";"            # default ","
      time: datetime            # the time column
      timezone: Europe/Moscow   # for times without an offset; default: the site's
      device: pump              # default device for the columns
      columns:
        Current: current_l1                               # quantity of the default device
        "Volume Flow RateRMS": {quantity: flow, scale: 0.06}   # L/min -> m3/h
        Pressure: {device: p1, quantity: pressure}
  so the SKAB files (tests/data/skab) replay as they are.
Every problem names file:line and what was expected.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.types import DeviceStatus, Event, Sample

LONG_HEADER = ["ts", "device", "quantity", "value"]


class TraceError(Exception):
    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


class ColumnMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity: str
    device: str | None = None
    scale: float = 1.0
    offset: float = 0.0


class WideMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    separator: str = Field(default=",", min_length=1, max_length=1)
    time: str = "ts"
    timezone: str | None = None
    device: str | None = None
    columns: dict[str, str | ColumnMap] = Field(min_length=1)


def load_mapping(path: Path) -> WideMapping:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return WideMapping.model_validate(data)
    except OSError as exc:
        raise TraceError(path, None, f"cannot read the mapping: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TraceError(path, None, f"mapping is not valid YAML: {exc}") from None
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise TraceError(path, None, f"invalid mapping: {msgs}") from None


def _parse_time(text: str, tz: ZoneInfo, path: Path, line: int) -> float:
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise TraceError(
            path, line, f"time: expected epoch seconds or ISO 8601 (2026-03-01T02:00:00+08:00), got {t!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.timestamp()


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TraceError(path, line, f"{what}: expected a number, got {text!r}") from None


@dataclass
class Trace:
    events: list[Event]
    devices: set[str]

    @property
    def start(self) -> float:
        return self.events[0].ts if self.events else 0.0

    @property
    def end(self) -> float:
        return self.events[-1].ts if self.events else 0.0


def read_trace(path: Path, site_tz: str, mapping: WideMapping | None = None) -> Trace:
    try:
        f = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise TraceError(path, None, f"cannot read the trace: {exc.strerror or exc}") from None
    with f:
        first = f.readline()
        f.seek(0)
        header = [h.strip() for h in first.strip().split(mapping.separator if mapping else ",")]
        if mapping is None:
            if header != LONG_HEADER:
                raise TraceError(
                    path, 1,
                    f"expected the long CSV header {','.join(LONG_HEADER)}, got {first.strip()!r}; "
                    "a wide CSV needs a column mapping (--mapping)",
                )  # fmt: skip
            events = _read_long(f, path, ZoneInfo(site_tz))
        else:
            tzname = mapping.timezone or site_tz
            try:
                tz = ZoneInfo(tzname)
            except (ZoneInfoNotFoundError, ValueError):
                raise TraceError(path, None, f"mapping timezone: unknown IANA zone {tzname!r}") from None
            events = _read_wide(f, path, mapping, tz)
    events.sort(key=lambda e: e.ts)  # stable: rows at the same instant keep their order
    return Trace(events, {e.device for e in events if isinstance(e, Sample | DeviceStatus)})


def _read_long(f: Any, path: Path, tz: ZoneInfo) -> list[Event]:
    events: list[Event] = []
    reader = csv.reader(f)
    next(reader)
    cur_key: tuple[float, str] | None = None
    cur_vals: dict[str, float] = {}

    def flush() -> None:
        if cur_key is not None and cur_vals:
            events.append(Sample(cur_key[1], cur_key[0], dict(cur_vals)))

    for row in reader:
        line = reader.line_num
        if not row or (row[0].startswith("#")):
            continue
        if len(row) != 4:
            raise TraceError(path, line, f"expected 4 fields ts,device,quantity,value, got {len(row)}")
        ts = _parse_time(row[0], tz, path, line)
        device, quantity, value = row[1].strip(), row[2].strip(), row[3].strip()
        if not device:
            raise TraceError(path, line, "device: must not be empty")
        if (ts, device) != cur_key:
            flush()
            cur_key, cur_vals = (ts, device), {}
        if value == "":
            events.append(DeviceStatus(device, ts, False, "no answer (trace)"))
            continue
        if not quantity:
            raise TraceError(path, line, "quantity: must not be empty when a value is given")
        cur_vals[quantity] = _number(value, path, line, "value")
    flush()
    return events


def _read_wide(f: Any, path: Path, m: WideMapping, tz: ZoneInfo) -> list[Event]:
    reader = csv.reader(f, delimiter=m.separator)
    header = [h.strip() for h in next(reader, [])]
    if m.time not in header:
        raise TraceError(path, 1, f"time column {m.time!r} not in the header {header}")
    cols: list[tuple[int, str, str, float, float]] = []
    for name, spec in m.columns.items():
        if name not in header:
            raise TraceError(path, 1, f"mapped column {name!r} not in the header {header}")
        cm = ColumnMap(quantity=spec) if isinstance(spec, str) else spec
        device = cm.device or m.device
        if device is None:
            raise TraceError(path, None, f"mapping column {name!r}: no device (give device: here or on top)")
        cols.append((header.index(name), device, cm.quantity, cm.scale, cm.offset))
    t_idx = header.index(m.time)
    events: list[Event] = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise TraceError(path, line, f"expected {len(header)} fields like the header, got {len(row)}")
        ts = _parse_time(row[t_idx], tz, path, line)
        per_device: dict[str, dict[str, float]] = {}
        silent: set[str] = set()
        for idx, device, quantity, scale, offset in cols:
            cell = row[idx].strip()
            if cell == "":
                silent.add(device)
                continue
            per_device.setdefault(device, {})[quantity] = (
                _number(cell, path, line, header[idx]) * scale + offset
            )
        for device, vals in per_device.items():
            events.append(Sample(device, ts, vals))
        for device in silent - per_device.keys():
            events.append(DeviceStatus(device, ts, False, "no answer (trace)"))
    return events
