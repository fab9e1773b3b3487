"""The daily KPI snapshot: the handbook's KPIs month to date (gateway/review/monthly.py), as the retained
`kpi/<gateway>` message, and when the next one is due (fleet.kpi_at, site time)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Site
from gateway.fleet.topics import VERSION, Topics, dumps
from gateway.review.data import ReviewReader
from gateway.review.monthly import monthly_review


def next_due(now: float, clock: tuple[int, int], tz: str) -> float:
    """The next instant after `now` at `clock` (HH, MM) in the site's time zone."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone)
    due = local.replace(hour=clock[0], minute=clock[1], second=0, microsecond=0)
    if due.timestamp() <= now:
        due = (due.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
    return due.timestamp()


def kpi_payload(site: Site, store_path: Path, topics: Topics, now: float) -> str:
    """The month-to-date KPIs with their targets and whether each is met (None: nothing to measure)."""
    tz = site.config.site.timezone
    month = datetime.fromtimestamp(now, ZoneInfo(tz)).strftime("%Y-%m")
    review = monthly_review(site, ReviewReader(store_path), month, now=now)
    kpis: dict[str, Any] = {
        k.key: {"met": k.met, "total": k.total, "value": k.value, "target": k.target, "ok": k.ok}
        for k in review.kpis
    }
    return dumps(
        {
            "v": VERSION,
            "type": "kpi",
            "id": f"{topics.site}/{topics.gateway}/kpi/{int(now)}",
            "site": topics.site,
            "gateway": topics.gateway,
            "at": now,
            "month": month,
            "from": review.start,
            "to": min(now, review.end),
            "timezone": tz,
            "kpis": kpis,
            "incidents": len(review.rows),
            "drills": len(review.drills),
            "response_target_s": review.response_target,
            "inform_within_s": review.inform_within,
        }
    )
