"""The incident report from a real incident store (tests/gateway/review/report_fixture.py): its summary,
timeline, targets, charts and data quality in Markdown, HTML and JSON, in Chinese and English; what it
says when evidence is missing or odd; and what bad input gets."""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import Site
from gateway.incidents.store import StoreReader
from gateway.review.data import ReviewReader
from gateway.review.report import (
    WORDS,
    IncidentReport,
    NoIncident,
    Words,
    build_report,
    chart_specs,
    draw_charts,
    duration_text,
    incident_report,
    render_html,
    render_markdown,
    report_json,
)
from tests.gateway.review.report_fixture import ID, T0, Outage, make_site, outage_evidence, write_outage

ZONE = ZoneInfo("Asia/Shanghai")


def hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, ZONE).strftime("%H:%M:%S")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def store(tmp_path: Path, site: Site) -> Path:
    path = tmp_path / "incidents.sqlite"
    write_outage(path, site, Outage())
    return path


def report_of(store: Path, site: Site, lang: str = "zh", evidence: bool = True) -> IncidentReport:
    rec = ReviewReader(store).record(ID)
    assert rec is not None
    return build_report(rec, site, outage_evidence(Outage()) if evidence else {}, lang, now=T0 + 3600)


def test_the_summary_timeline_and_targets_in_chinese(store: Path, site: Site) -> None:
    o = Outage()
    report = report_of(store, site)
    md = render_markdown(report, {c.name: f"report-7-{c.name}.png" for c in report.charts})

    assert md.startswith("# 事件报告 #7: 停电 · B1")
    assert "| 事件编码 | 003 设备故障 |" in md
    assert "| 受影响户数 | 40 |" in md
    # 40 households for 1495.5 s (first evidence to supply back: the recovery the resolution ended)
    assert "| 停供户·分钟 | 997 |" in md
    assert report.summary.household_minutes == pytest.approx(40 * 1495.5 / 60, abs=0.1)
    assert "| 原因 | 变压器过载跳闸，已复位 |" in md
    assert "时间均为 Asia/Shanghai 当地时间" in md

    rows = {(r.kind, r.at.ts) for r in report.timeline}
    for kind, ts in [
        ("first_evidence", o.first_evidence),
        ("opened", o.opened),
        ("dispatched", o.dispatched),
        ("acknowledged", o.acked),
        ("on_site", o.on_site),
        ("recovering", o.back),
        ("resolved", o.resolved),
        ("downtime", T0 + 600),
    ]:
        assert (kind, ts) in rows, kind
    # the timeline is in time order, each notice at its first delivery
    times = [r.at.ts for r in report.timeline]
    assert times == sorted(times)
    notices = {r.notice.stage: r for r in report.timeline if r.notice is not None}
    assert notices["residents_notice"].at.ts == o.informed
    assert notices["all_clear"].at.ts == o.all_clear
    assert [d.status for d in notices["dispatch"].notice.deliveries] == ["success", "failure"]  # type: ignore[union-attr]
    assert f"| {hms(o.acked)} | 确认接单 | by desk |" in md  # type: ignore[arg-type]
    assert f"| {hms(o.on_site)} | 到场 | by wang |" in md  # type: ignore[arg-type]
    assert f"| {hms(T0 + 600)} – {hms(T0 + 660)} | 网关离线 | 非正常停止, 1分钟 |" in md
    assert "json://127.0.0.1:9/b: 失败 ×3 (HTTP 500)" in md
    # a pipe in a note does not end its table cell
    assert "变压器跳闸 <script>alert(1)</script> \\| 已通知供电局" in md

    targets = {t.key: t for t in report.targets}
    assert targets["detect"].seconds == 2.5 and targets["detect"].met is None
    assert targets["inform"].seconds == pytest.approx(63.5) and targets["inform"].met is True
    assert targets["acknowledge"].seconds == 296.0 and targets["acknowledge"].met is True
    assert targets["on_site"].seconds == 896.0 and targets["on_site"].met is True
    assert targets["outage"].seconds == pytest.approx(1495.5)  # to supply back, not the resolution
    assert "| 确认用时 (派单 → 确认接单) | 4分56秒 | ≤ 30分钟 | **达标** |" in md
    assert "| 到场用时 (派单 → 到场) | 14分56秒 | ≤ 30分钟 | **达标** |" in md
    assert "| 通知住户用时 (首个异常读数 → 住户通知送达) | 1分04秒 | ≤ 15分钟 | **达标** |" in md
    assert "![B1-main（B1）](report-7-B1-main.png)" in md


def test_english_on_request(store: Path, site: Site) -> None:
    report = report_of(store, site, "en")
    md = render_markdown(report)
    assert md.startswith("# Incident report #7: power outage · B1")
    assert "| Event code | 003 equipment failure |" in md
    assert "| Time to acknowledge (dispatched → acknowledged) | 4 min 56 s | ≤ 30 min | **met** |" in md
    assert "not a clean stop" in md
    # no chart files given: the Markdown links none
    assert "![" not in md
    html = render_html(report)
    assert '<html lang="en">' in html and "Incident report #7" in html


def test_missed_targets_say_so(tmp_path: Path, site: Site) -> None:
    # acknowledged after 40 min, nobody on site, the residents' notice after 20 min
    o = Outage(acked=T0 + 4 + 2400, on_site=None, informed=T0 + 1201.5)
    path = tmp_path / "late.sqlite"
    write_outage(path, site, o)
    rec = ReviewReader(path).record(ID)
    assert rec is not None
    report = build_report(rec, site, {}, "zh")
    targets = {t.key: t for t in report.targets}
    assert targets["acknowledge"].met is False and targets["acknowledge"].verdict == "未达标"
    assert targets["inform"].met is False and targets["inform"].verdict == "未达标"
    assert targets["on_site"].seconds is None and targets["on_site"].verdict == "未发生"
    html = render_html(report)
    assert html.count('class="target-missed"') == 2


def test_an_open_incident_is_reported_as_it_stands(tmp_path: Path, site: Site) -> None:
    o = Outage(back=None, resolved=None, on_site=None)
    path = tmp_path / "open.sqlite"
    write_outage(path, site, o)
    report = incident_report(ReviewReader(path), StoreReader(path), site, ID, "zh")
    assert report.summary.state == "firing" and report.summary.resolved is None
    md = render_markdown(report)
    assert "| 恢复 | 尚未恢复 |" in md and "| 停供时长 | 尚未恢复 |" in md
    assert {t.key: t.verdict for t in report.targets}["outage"] == "尚未恢复"


def test_html_is_one_self_contained_page(store: Path, site: Site) -> None:
    report = report_of(store, site)
    charts = draw_charts(report)
    html = render_html(report, charts)
    # nothing fetched: no script, no linked style sheet, every picture inside as a data: URI
    assert "<script>" not in html.replace("&lt;script&gt;", "")
    assert "<link" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(charts) == 2
    assert all(src.startswith("data:image/png;base64,") for src in images)
    # the note's markup is text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<style>" in html and "--bad:" in html  # the pages' look, inline


def test_charts_show_each_device_with_the_timeline_marked(store: Path, site: Site) -> None:
    report = report_of(store, site)
    assert [m.kind for m in report.marks] == [
        "first_evidence", "opened", "dispatched", "acknowledged", "on_site", "resolved",
    ]  # fmt: skip
    specs = chart_specs(report)
    assert [s.name for s in specs] == ["B1-main", "B1-unit"]
    main = specs[0]
    assert [p.label for p in main.panels] == ["电压 (V)"]
    assert [ln.label for ln in main.panels[0].lines] == ["L1", "L2", "L3"]
    assert main.marks[0].label == f"首个异常读数 {hms(Outage().first_evidence)}"
    assert [s.kind for s in main.spans] == ["incident", "downtime"]
    for chart in draw_charts(report):
        width, height = png_size(chart.png)
        assert width > 800 and height > 300
    # without a CJK font the charts are labelled in English and by device id
    plain = chart_specs(report, ascii_only=True)[0]
    assert plain.title == "B1-main" and plain.panels[0].label == "voltage (V)"
    assert plain.marks[0].label.startswith("first evidence ")


def test_data_quality_names_gaps_silence_and_downtime(store: Path, site: Site) -> None:
    o = Outage()
    report = report_of(store, site)
    q = report.quality
    assert q.has_evidence and q.devices == 2
    # B1-unit is powered by the supply that failed: its silence is a gap, and expected
    [gap] = q.gaps
    assert gap.device == "B1-unit" and gap.expected
    assert gap.start.ts < o.first_evidence < gap.end.ts and gap.end.ts >= o.back  # type: ignore[operator]
    assert q.silent == []
    assert [(d.start.ts, d.end.ts, d.clean_stop) for d in q.downtimes] == [(T0 + 600, T0 + 660, False)]
    assert "网关离线期间没有读数，也没有发出通知。" in q.notes


def test_odd_evidence_is_reported_not_drawn(store: Path, site: Site) -> None:
    o = Outage()
    rec = ReviewReader(store).record(ID)
    assert rec is not None
    evidence = outage_evidence(o, step=5.0)
    main = evidence["B1-main"]
    main["voltage_l1"][3] = (main["voltage_l1"][3][0], float("nan"))  # not a number
    main["voltage_l2"].reverse()  # times going backwards: a clock set back
    main["voltage_l3"].append((o.first_evidence + 10 * 86400, 230.0))  # far from the incident
    del evidence["B1-unit"]  # a device of the incident that sent nothing
    report = build_report(rec, site, evidence, "en")
    notes = " ".join(report.quality.notes)
    assert "1 reading(s) were not numbers" in notes
    assert "Reading times go backwards (B1-main/voltage_l2)" in notes
    assert "more than a day away from the incident (B1-main/voltage_l3)" in notes
    assert [(s.device, s.since, s.expected) for s in report.quality.silent] == [("B1-unit", None, True)]
    assert all(v == v for s in report.evidence for _, v in s.points)  # no NaN left to draw
    json.dumps(report_json(report), allow_nan=False)


def test_no_evidence_stored_is_said_and_nothing_drawn(store: Path, site: Site) -> None:
    report = report_of(store, site, evidence=False)
    assert report.charts == [] and draw_charts(report) == []
    assert not report.quality.has_evidence
    assert report.quality.notes[0].startswith("本事件没有保存证据数据")
    # the incident's devices are named as silent: nothing of theirs was kept
    assert {s.device for s in report.quality.silent} == {"B1-main", "B1-unit"}
    md = render_markdown(report)
    assert "本事件没有保存证据数据，因此没有曲线。" in md
    html = render_html(report)
    assert "<img" not in html and "本事件没有保存证据数据，因此没有曲线。" in html


def test_evidence_kept_in_the_store_is_drawn_and_its_thinning_said(tmp_path: Path, site: Site) -> None:
    o = Outage()
    path = tmp_path / "kept.sqlite"
    write_outage(path, site, o, outage_evidence(o, step=4.0), thinned=(4.0, 1234))
    report = incident_report(ReviewReader(path), StoreReader(path), site, ID, "zh")
    assert [c.device for c in report.charts] == ["B1-main", "B1-unit"]
    assert (
        report.quality.notes[0] == "为使证据数据不超过上限，读数已均匀抽稀为每4秒一个（略去 1234 个读数）。"
    )
    # a device whose readings come every 4 s has no gap every 4 s
    assert [g.device for g in report.quality.gaps] == ["B1-unit"]
    assert len(draw_charts(report)) == 2


def test_a_store_from_before_evidence_was_kept(tmp_path: Path, store: Path, site: Site) -> None:
    # a store the daemon has not opened since evidence keeping came (IncidentStore adds the tables on open)
    with sqlite3.connect(store) as db:
        db.execute("DROP TABLE evidence")
        db.execute("DROP TABLE evidence_meta")
    report = incident_report(ReviewReader(store), StoreReader(store), site, ID, "en")
    assert report.quality.notes[0].startswith("No evidence was stored with this incident")
    assert not any("could not be read" in n for n in report.quality.notes)


def test_json_form_for_a_management_system(store: Path, site: Site) -> None:
    o = Outage()
    data = report_json(report_of(store, site))
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    back = json.loads(text)
    assert back["format"] == "meterwatch.incident-report/1"
    assert back["lang"] == "zh" and back["site"]["timezone"] == "Asia/Shanghai"
    s = back["summary"]
    assert s["event_code"] == "003" and s["category"] == "power_outage" and s["households"] == 40
    assert s["first_evidence"] == {"ts": o.first_evidence, "at": "2026-10-26T15:33:21+08:00"}
    acked = next(r for r in back["timeline"] if r["kind"] == "acknowledged")
    assert acked["at"]["ts"] == o.acked
    targets = {t["key"]: t for t in back["targets"]}
    assert targets["acknowledge"] | {"label": "", "basis": "", "verdict": ""} == {
        "key": "acknowledge", "label": "", "basis": "", "seconds": 296.0, "value": "4分56秒",
        "target_s": 1800.0, "target": "≤ 30分钟", "met": True, "verdict": "",
    }  # fmt: skip
    assert {c["channel"]: (c["sent"], c["failed"]) for c in back["notices"]} == {
        "residents": (2, 0),
        "team": (1, 1),
    }
    series = {(x["device"], x["quantity"]): x for x in back["evidence"]}
    assert series[("B1-main", "voltage_l1")]["unit"] == "V"
    assert series[("B1-main", "voltage_l1")]["points"][0] == [o.first_evidence - 900, 229.0]


def test_unknown_incident_language_or_store(tmp_path: Path, store: Path, site: Site) -> None:
    reader, evidence = ReviewReader(store), StoreReader(store)
    with pytest.raises(NoIncident, match=f"no incident 99 in {store}"):
        incident_report(reader, evidence, site, 99)
    with pytest.raises(ValueError, match="unknown language 'fr'; expected one of zh, en"):
        incident_report(reader, evidence, site, ID, "fr")
    missing = tmp_path / "nowhere.sqlite"
    with pytest.raises(FileNotFoundError, match="no incident store here"):
        incident_report(ReviewReader(missing), StoreReader(missing), site, ID)
    assert not missing.exists()  # reading never makes a store


def test_words_are_in_both_languages() -> None:
    assert set(WORDS["zh"]) == set(WORDS["en"])
    table = {"zh": {"a": "甲"}, "en": {"a": "a"}}
    good = dict.fromkeys(Words.model_fields, table)
    Words.model_validate(good)
    bad = good | {"stages": {"zh": {"a": "甲"}, "en": {"b": "b"}}}
    with pytest.raises(ValueError, match="stages: expected the same keys in zh and en"):
        Words.model_validate(bad)


@pytest.mark.parametrize(
    ("seconds", "zh", "en"),
    [
        (0.4, "0秒", "0 s"),
        (45, "45秒", "45 s"),
        (296, "4分56秒", "4 min 56 s"),
        (1800, "30分钟", "30 min"),
        (3600 + 180, "1小时03分", "1 h 03 min"),
        (7200, "2小时", "2 h"),
        (90000, "1天1小时", "1 d 1 h"),
    ],
)
def test_durations_to_the_second(seconds: float, zh: str, en: str) -> None:
    assert duration_text(seconds, "zh") == zh
    assert duration_text(seconds, "en") == en
    assert duration_text(None, "zh") == "" and duration_text(float("inf"), "en") == ""
