"""When the daily KPI snapshot is due: fleet.kpi_at in the site's time zone, whatever the host's."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.fleet.kpi import next_due

SH = ZoneInfo("Asia/Shanghai")


def at(*args: int) -> float:
    return datetime(*args, tzinfo=SH).timestamp()


def test_next_due_is_today_before_the_time_and_tomorrow_after() -> None:
    assert next_due(at(2026, 11, 30, 5, 0), (6, 0), "Asia/Shanghai") == at(2026, 11, 30, 6, 0)
    assert next_due(at(2026, 11, 30, 6, 0), (6, 0), "Asia/Shanghai") == at(2026, 12, 1, 6, 0)
    assert next_due(at(2026, 12, 31, 23, 59), (0, 0), "Asia/Shanghai") == at(2027, 1, 1, 0, 0)


def test_next_due_keeps_the_local_time_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime(2026, 10, 24, 12, 0, tzinfo=berlin).timestamp()  # the night of 25 October: 3 -> 2
    due = next_due(before + 86400 / 2, (6, 0), "Europe/Berlin")
    assert datetime.fromtimestamp(due, berlin).hour == 6
    assert datetime.fromtimestamp(due, berlin).day == 25
