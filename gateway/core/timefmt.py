"""Timestamps as people read them: local time of a zone, ISO 8601 to the second."""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo


def local_iso(ts: float, tz: str | tzinfo) -> str:
    """`ts` (Unix seconds) in the zone `tz` (an IANA name or a tzinfo), e.g. 2026-03-02T10:00:25+08:00."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    return datetime.fromtimestamp(ts, zone).isoformat(timespec="seconds")
