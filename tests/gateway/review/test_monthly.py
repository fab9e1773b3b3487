"""The monthly review of a synthetic November (tests/gateway/review/month_fixture.py) written into a real
incident store by the real writers: its KPIs equal those computed here from the scenarios' own times
(never through gateway/review/measures.py), it renders as Markdown, CSV, JSON and a self-contained HTML
page that headless Chromium shows with its green and red, and a bad month is refused with a clear error.

MW_UPDATE_SCREENSHOTS=1 also copies the example page and its screenshot to docs/reports/.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from gateway.config import Site
from gateway.respond.model import DeliveryStatus, Stage
from gateway.review.data import ReviewReader
from gateway.review.monthly import (
    MonthlyReview,
    month_bounds,
    month_csv,
    month_json,
    monthly_review,
    nearest_rank,
    render_month_html,
    render_month_markdown,
)
from tests.gateway.review.month_fixture import (
    CONFIRM_DELAY,
    HOUSEHOLDS,
    MONTH,
    Scenario,
    local,
    make_site,
    november,
    write_month,
)
from tests.helpers import REPO

CHROMIUM = shutil.which("chromium")
DOCS = REPO / "docs" / "reports"
AFTER_THE_MONTH = local("2026-12-02 09:00")  # when the review is made: November is over
INFORM_WITHIN, RESPONSE_WITHIN = 900.0, 1800.0  # the site file's review.inform_within, oncall.target
SUPPLY = {"power_outage", "phase_loss", "undervoltage", "overvoltage", "water_supply", "water_burst"}


@dataclass(frozen=True)
class Month:
    site: Site
    store: Path
    scenarios: list[Scenario]
    review: MonthlyReview


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Month:
    d = tmp_path_factory.mktemp("month")
    site = make_site(d)
    scenarios = november()
    write_month(site, d / "incidents.db", scenarios)
    review = monthly_review(site, ReviewReader(d / "incidents.db"), MONTH, now=AFTER_THE_MONTH)
    return Month(site, d / "incidents.db", scenarios, review)


# ---- the truth, from the scenarios alone ----------------------------------------------------------------
def in_november(s: Scenario) -> bool:
    return local("2026-11-01 00:00") <= s.opened < local("2026-12-01 00:00") and s.merged_into is None


def real(m: Month) -> list[Scenario]:
    return [s for s in m.scenarios if in_november(s) and not s.drill]


def drills(m: Month) -> list[Scenario]:
    return [s for s in m.scenarios if in_november(s) and s.drill]


def is_outage(s: Scenario) -> bool:
    """A supply outage that owed its residents a notice and lasted past the confirmation delay."""
    if s.category not in CONFIRM_DELAY or "residents" not in s.audiences:
        return False
    return s.resolved is None or s.resolved - s.first_evidence > CONFIRM_DELAY[s.category]


def informed_at(s: Scenario) -> float | None:
    times = [
        t for n in s.notices if n.stage == Stage.RESIDENTS_NOTICE if (t := n.first_success()) is not None
    ]
    return min(times) if times else None


def counted_votes(s: Scenario) -> list[str]:
    """The ratings that count: each link's first."""
    first: dict[str, str] = {}
    for v in sorted(s.votes, key=lambda v: v.at):
        first.setdefault(v.token, v.rating)
    return list(first.values())


def p90(values: list[float]) -> float:
    """The smallest value at least 90 % of the values are at most."""
    return min(x for x in values if sum(v <= x for v in values) >= 0.9 * len(values))


def test_the_synthetic_month_is_big_enough(month: Month) -> None:
    scenarios = real(month)
    assert len(scenarios) >= 30
    assert {b for s in scenarios for b in s.buildings} == {"B1", "B2", "B3"}
    assert len(drills(month)) == 2
    assert len(month.review.rows) == len(scenarios) == 35
    assert len(month.review.drills) == 2


def test_kpis_equal_the_scenarios(month: Month) -> None:
    r = month.review
    outages = [s for s in real(month) if is_outage(s)]
    in_time = [
        s for s in outages if (t := informed_at(s)) is not None and t - s.first_evidence <= INFORM_WITHIN
    ]
    informed = r.kpi("informed")
    assert (informed.met, informed.total) == (len(in_time), len(outages)) == (13, 17)
    assert informed.value == pytest.approx(13 / 17)
    assert informed.target == 0.9 and informed.ok is False

    dispatched = [s for s in real(month) if s.dispatched is not None]
    responded = [
        s for s in dispatched if s.acked is not None and s.acked - (s.dispatched or 0) <= RESPONSE_WITHIN
    ]
    response = r.kpi("response")
    assert (response.met, response.total) == (len(responded), len(dispatched)) == (25, 27)
    assert response.ok is True  # 92.6 % >= 90 %

    votes = Counter(r for s in real(month) for r in counted_votes(s))
    assert sum(len(s.votes) for s in real(month)) == 38  # one link voted twice
    satisfaction = r.kpi("satisfaction")
    assert (satisfaction.met, satisfaction.total) == (votes["satisfied"], sum(votes.values())) == (24, 37)
    assert satisfaction.ok is False
    assert r.votes == {"satisfied": 24, "neutral": 7, "unsatisfied": 6}


def test_p90_is_the_nearest_rank() -> None:
    assert nearest_rank([float(x) for x in range(1, 11)], 0.9) == 9.0  # 9 of 10 are within 9
    assert nearest_rank([float(x) for x in range(1, 12)], 0.9) == 10.0  # 10 of 11: 90.9 %
    assert nearest_rank([7.0], 0.9) == 7.0
    assert nearest_rank([], 0.9) is None


def test_times_equal_the_scenarios(month: Month) -> None:
    dispatched = [s for s in real(month) if s.dispatched is not None]
    ack = [s.acked - s.dispatched for s in dispatched if s.acked is not None and s.dispatched is not None]
    on_site = [
        s.on_site - s.dispatched for s in dispatched if s.on_site is not None and s.dispatched is not None
    ]
    restore = [s.resolved - s.first_evidence for s in real(month) if s.resolved is not None]
    for key, values, missing in (
        ("ack", ack, 1),
        ("on_site", on_site, 1),
        ("restore", restore, 1),
    ):
        spread = month.review.spread(key)
        assert sorted(spread.values) == pytest.approx(sorted(values)), key
        assert spread.missing == missing, key
        assert spread.median == pytest.approx(statistics.median(values)), key
        assert spread.p90 == pytest.approx(p90(values)), key
    # by hand, for one of them: 26 acknowledgements, the 14th and 13th smallest around the median
    assert month.review.spread("ack").median == pytest.approx((8 * 60 + 13 + 9 * 60 + 13) / 2)


def test_counts_by_category_code_building_and_device(month: Month) -> None:
    r, scenarios = month.review, real(month)
    assert dict(r.by_category) == Counter(s.category for s in scenarios)
    assert (
        dict(r.by_event_code)
        == Counter(s.event_code for s in scenarios)
        == {"003": 31, "005": 2, "002": 1, "006": 1}
    )
    assert dict(r.by_building) == Counter(b for s in scenarios for b in s.buildings)
    devices = Counter(d for s in scenarios for d in s.devices if not d.startswith("channel:"))
    assert dict(r.by_device) == devices
    faults = Counter(s.scope.split(":")[1] for s in scenarios
                     if s.scope.startswith("device:") and s.category != "comm_fault")  # fmt: skip
    comm = Counter(d for s in scenarios if s.category == "comm_fault" for d in s.devices)
    got = {d.device: (d.incidents, d.faults, d.comm_faults) for d in r.devices}
    assert got == {d: (devices[d], faults[d], comm[d]) for d in devices}
    # worst first: two faults each (B1-m2 and B2-m1 lost their link twice, B3's pump failed twice), then
    # the more incidents naming the device
    assert [(d.device, d.faults + d.comm_faults, d.incidents) for d in r.devices[:3]] == [
        ("B1-m2", 2, 6),
        ("B2-m1", 2, 5),
        ("B3-pump", 2, 2),
    ]


def test_household_minutes_per_building(month: Month) -> None:
    expected: dict[str, float] = dict.fromkeys(HOUSEHOLDS, 0.0)
    outages: Counter[str] = Counter()
    for s in real(month):
        if s.category not in SUPPLY or s.resolved is None:
            continue
        minutes = s.households * (s.resolved - s.first_evidence) / 60
        weight = sum(HOUSEHOLDS[b] for b in s.buildings)
        for b in s.buildings:
            expected[b] += minutes * HOUSEHOLDS[b] / weight
            outages[b] += 1
    got = {b.building: b for b in month.review.buildings}
    assert set(got) == {"B1", "B2", "B3"}
    for b, hh in HOUSEHOLDS.items():
        assert got[b].household_minutes == pytest.approx(expected[b]), b
        assert got[b].outages == outages[b], b
        assert got[b].per_household == pytest.approx(expected[b] / hh), b
    # the drills cut nobody's supply: not a household-minute from them
    assert all(row.m.household_minutes == 0 for row in month.review.drills)


def test_notices_per_channel(month: Month) -> None:
    expected: dict[str, Counter[str]] = {}
    for s in real(month):
        for n in s.notices:
            for channel, _, status in n.final():
                ok = "sent" if status == DeliveryStatus.SUCCESS else "failed"
                expected.setdefault(channel, Counter())[ok] += 1
    got = {c.channel: (c.sent, c.failed) for c in month.review.channels}
    assert got == {c: (n["sent"], n["failed"]) for c, n in expected.items()}
    # two outages never told, one SMS number failing
    assert got["wecom-res"][1] == 2 and got["sms-b1"][1] == 1


def test_drills_stand_apart(month: Month) -> None:
    r = month.review
    assert [row.m.incident_id for row in r.drills] == [s.id for s in drills(month)]
    real_ids = {row.m.incident_id for row in r.rows}
    assert not real_ids & {s.id for s in drills(month)}
    acks = [s.acked - s.dispatched for s in drills(month) if s.acked is not None and s.dispatched is not None]
    assert sorted(r.drill_times[0].values) == pytest.approx(sorted(acks))
    assert {c.channel for c in r.drill_channels} == {"staff-bot"}


def test_the_month_boundaries(month: Month) -> None:
    r = month.review
    october = next(s for s in month.scenarios if s.name.startswith("2026-10-31"))
    merged = next(s for s in month.scenarios if s.merged_into is not None)
    last = next(s for s in month.scenarios if s.name.startswith("11-30"))
    ids = {row.m.incident_id for row in r.rows}
    assert october.id not in ids and merged.id not in ids and last.id in ids
    # the one running into December counts whole in November, and says so
    row = next(row for row in r.rows if row.m.incident_id == last.id)
    assert row.continues and last.resolved is not None
    assert row.m.duration_s == pytest.approx(last.resolved - last.first_evidence)
    # October's own review has its incident (and its votes), December's has nothing of November's
    oct_review = monthly_review(month.site, ReviewReader(month.store), "2026-10", now=AFTER_THE_MONTH)
    assert [row.m.incident_id for row in oct_review.rows] == [october.id]
    assert oct_review.kpi("satisfaction").total == len(counted_votes(october)) == 1
    dec_review = monthly_review(month.site, ReviewReader(month.store), "2026-12", now=AFTER_THE_MONTH)
    assert dec_review.rows == () and dec_review.in_progress


def test_a_month_without_incidents_says_no_data_not_100_percent(month: Month) -> None:
    empty = monthly_review(month.site, ReviewReader(month.store), "2026-09", now=AFTER_THE_MONTH)
    assert [k.value for k in empty.kpis] == [None, None, None]
    assert [k.ok for k in empty.kpis] == [None, None, None]
    assert all(s.median is None and s.p90 is None for s in empty.times)
    md = render_month_markdown(empty, "en")
    assert "100.0 %" not in md
    assert "| Residents informed in time | — | 0/0 | ≥ 90.0 % | ⚪ no data |" in md
    assert "No incident this month." in md and "No drill this month." in md
    html = render_month_html(empty, "zh")
    assert html.count('class="card none"') == 3 and "无数据" in html
    data = month_json(empty)
    assert data["kpis"]["informed"]["value"] is None
    assert month_csv(empty).splitlines()[0].startswith("id,opened,")


# ---- rendering ------------------------------------------------------------------------------------------
def test_markdown_in_chinese_and_english(month: Month) -> None:
    zh = render_month_markdown(month.review, "zh")
    assert zh.startswith("# 翠园小区 2026-11 月度运行分析\n")
    assert "| 停水停电后及时告知住户 | 76.5 % | 13/17 | ≥ 90.0 % | 🔴 未达标 |" in zh
    assert "| 30 分钟内响应 | 92.6 % | 25/27 | ≥ 90.0 % | 🟢 达标 |" in zh
    assert "| 住户满意度 | 64.9 % | 24/37 | ≥ 85.0 % | 🔴 未达标 |" in zh
    assert "## 演练（不计入以上指标）" in zh and "本月演练 2 次。" in zh
    assert "本月尚未结束" not in zh  # made after the month
    en = render_month_markdown(month.review, "en")
    assert "| Response within 30 minutes | 92.6 % | 25/27 | ≥ 90.0 % | 🟢 met |" in en
    # one line per figure saying how it is defined, the site's thresholds filled in
    defs = en.split("## How each figure is defined\n", 1)[1].strip().splitlines()
    assert len(defs) == 11 and all(line.startswith("- **") for line in defs)
    assert any("within 15 min of the first evidence" in line for line in defs)
    assert any("within 30 min of the dispatch" in line for line in defs)
    # every incident listed once, in a table row of its own
    for row in month.review.rows:
        assert len(re.findall(rf"^\| {row.m.incident_id} \|", en, re.M)) == 1


def test_csv_lists_every_incident(month: Month) -> None:
    rows = list(csv.DictReader(io.StringIO(month_csv(month.review))))
    by_id = {int(r["id"]): r for r in rows}
    assert len(rows) == 35
    for s in real(month):
        row = by_id[s.id]
        assert row["category"] == s.category and row["buildings"] == " ".join(s.buildings)
        if s.acked is not None and s.dispatched is not None:
            assert int(row["ack_s"]) == round(s.acked - s.dispatched)
        else:
            assert row["ack_s"] == ""
        assert row["informed_in_time"] in ("", "0", "1")
    last = next(s for s in month.scenarios if s.name.startswith("11-30"))
    assert by_id[last.id]["continues_next_month"] == "1"
    assert by_id[last.id]["opened"] == "2026-11-30T23:40:45+08:00"
    drill_rows = list(csv.DictReader(io.StringIO(month_csv(month.review, drills=True))))
    assert [int(r["id"]) for r in drill_rows] == [s.id for s in drills(month)]


def test_json_carries_every_figure(month: Month) -> None:
    data = json.loads(json.dumps(month_json(month.review)))  # JSON-able throughout
    assert data["month"] == "2026-11" and data["in_progress"] is False
    assert data["kpis"]["informed"] == {
        "value": pytest.approx(13 / 17),
        "met": 13,
        "total": 17,
        "target": 0.9,
        "ok": False,
    }
    assert data["incidents_total"] == 35 and len(data["incidents"]) == 35
    assert data["drills"]["count"] == 2
    assert set(data["definitions"]) >= {"informed", "response", "satisfaction", "household_minutes"}
    assert data["notices"]["wecom-res"]["failed"] == 2


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_html_is_one_self_contained_page(month: Month) -> None:
    html = render_month_html(month.review, "zh")
    assert html.startswith("<!doctype html>") and '<html lang="zh-CN">' in html
    # nothing fetched from elsewhere: no script, style sheet, external image or font
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(?!data:)', html)
    images = _pngs(html)
    assert len(images) == 6 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    assert html.count('class="card missed"') == 2 and html.count('class="card met"') == 1
    en = render_month_html(month.review, "en")
    assert '<html lang="en">' in en and "Residents informed in time" in en


def test_titles_are_escaped(month: Month) -> None:
    row = replace(month.review.rows[0], title="<b>x</b> | y")
    evil = replace(month.review, rows=(row,))
    html = render_month_html(evil, "en")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt; | y" in html
    md = render_month_markdown(evil, "en")
    assert "<b>x</b> \\| y |" in md


def test_html_in_headless_chromium(month: Month, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "Debian's chromium is not installed (scripts/bootstrap installs it)"
    page = tmp_path / "month-example.html"
    shot = tmp_path / "month-example.png"
    page.write_text(render_month_html(month.review, "zh"), encoding="utf-8")
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1000,3000", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    img = mpimg.imread(shot)[:, :, :3]
    assert img.shape[:2] == (3000, 1000)

    def share(hex_colour: str) -> float:
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return float(np.mean(np.all(np.abs(img - rgb) < 0.04, axis=2)))

    # the KPI cards and bars are drawn in their colours: red (missed) and green (met) both show
    assert share("#b91c1c") > 0.002 and share("#15803d") > 0.002
    # the top of the page holds words (dark pixels), not a blank or an error page
    assert float(np.mean(img[:400].sum(axis=2) < 1.0)) > 0.005
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, DOCS / "month-example.html")
        shutil.copyfile(shot, DOCS / "month-example.png")


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("month_text", "words"),
    [
        ("2026-13", "month 13; expected 01 to 12"),
        ("2026-00", "month 00; expected 01 to 12"),
        ("2026-1", "expected YYYY-MM such as 2026-11, got '2026-1'"),
        ("202611", "expected YYYY-MM"),
        ("2026-11-01", "expected YYYY-MM"),
        ("Nov 2026", "expected YYYY-MM"),
        (" 2026-11", "expected YYYY-MM"),
        ("", "expected YYYY-MM such as 2026-11, got ''"),
        ("1969-12", "before 1970"),
    ],
)
def test_bad_month_strings_are_refused_clearly(month: Month, month_text: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        month_bounds(month_text, "Asia/Shanghai")
    assert str(info.value).startswith("month: ")
    with pytest.raises(ValueError, match=re.escape(words)):
        monthly_review(month.site, ReviewReader(month.store), month_text)


def test_bad_zone_and_language_are_refused(month: Month) -> None:
    zone = "time zone: expected an IANA name such as Asia/Shanghai, got 'Mars/Base'"
    with pytest.raises(ValueError, match=re.escape(zone)):
        month_bounds("2026-11", "Mars/Base")
    with pytest.raises(ValueError, match=r"lang: expected zh .* or en .*, got 'fr'"):
        render_month_markdown(month.review, "fr")
    with pytest.raises(ValueError, match="lang: expected zh"):
        render_month_html(month.review, "fr")


def test_month_bounds_in_the_site_zone() -> None:
    start, end = month_bounds("2026-11", "Asia/Shanghai")
    assert start == local("2026-11-01 00:00") and end == local("2026-12-01 00:00")
    assert end - start == 30 * 86400
    start, end = month_bounds("2026-12", "Asia/Shanghai")  # December runs into the next year
    assert end == local("2027-01-01 00:00")
    # a month with a clock change is an hour short: March 2026 in New York
    start, end = month_bounds("2026-03", "America/New_York")
    assert end - start == 31 * 86400 - 3600
    assert math.isclose(start % 3600, 0)
