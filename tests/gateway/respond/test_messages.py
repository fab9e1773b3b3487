"""The messages of the notices: every stage in both languages, the override folder, template errors, the
sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import Site, load_site
from gateway.respond.context import incident_context
from gateway.respond.messages import (
    OPTIONAL,
    Messages,
    TemplateProblem,
    format_duration,
    format_names,
    format_time,
    sample_context,
)
from gateway.respond.model import RESIDENT_STAGES, Stage
from rules.model import Incident, IncidentState

HOTLINE = "400-800-1234"
OPENED = 1772417100.0  # 2026-03-02 10:05 in Asia/Shanghai
OPENED_ZH, OPENED_EN = "3月2日 10:05", "2 Mar 10:05"
ETA_ZH, ETA_EN = "3月2日 14:00", "2 Mar 14:00"

SITE_YAML = """\
site: {{id: garden, name: 阳光花园, timezone: Asia/Shanghai}}
buildings:
  - id: B1
    name: 1号楼
    households: 96
    domains:
      - {{id: B1-power, kind: power}}
      - {{id: B1-water, kind: water}}
  - {{id: B2, name: 2号楼, households: 64}}
lines:
  - {{id: l1, transport: tcp, host: 127.0.0.1, port: 5020}}
devices:
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, households: 96, line: l1, unit: 1,
     profile: sdm630}}
  - {{id: B1-pressure, building: B1, domain: B1-water, role: zone_pressure, households: 96, line: l1,
     unit: 2, profile: rs485-pressure}}
notify:
  hotline: "{hotline}"
{extra}"""


def write_site(folder: Path, extra: str = "", hotline: str = HOTLINE) -> Path:
    """A two-building site file in `folder`; `extra` adds lines under its notify: section."""
    path = folder / "site.yaml"
    path.write_text(SITE_YAML.format(hotline=hotline, extra=extra), encoding="utf-8")
    return path


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return load_site(write_site(tmp_path))


def incident(category: str, scope: str, state: IncidentState = IncidentState.FIRING) -> Incident:
    resolved = state == IncidentState.RESOLVED
    return Incident(
        id=17,
        key=f"{category}/{scope}",
        category=category,
        scope=scope,
        title=f"{category.replace('_', ' ')}: {scope.replace(':', ' ')}",
        severity="critical",
        event_code="001",
        audiences=["staff", "residents", "utility"],
        households=96,
        state=state,
        opened_at=OPENED,
        first_evidence_at=OPENED - 25,
        updated_at=OPENED,
        resolved_at=OPENED + 8100 if resolved else None,
        symptoms={"B1-main": ["power.outage"]},
        evidence=["main meter B1-main reads no voltage on any phase"],
    )


OUTAGES = {"power_outage": "domain:B1-power", "water_supply": "domain:B1-water"}


def context(site: Site, stage: Stage, category: str, **extra: Any) -> dict[str, Any]:
    resolved = stage in (Stage.ALL_CLEAR, Stage.RESOLVED)
    inc = incident(category, OUTAGES[category], IncidentState.RESOLVED if resolved else IncidentState.FIRING)
    if resolved:
        extra.setdefault("duration_s", 8100.0)
    if stage == Stage.ESCALATION:
        extra.setdefault("step", 2)
    if stage in (Stage.DISPATCH, Stage.ESCALATION):
        extra.setdefault("links", {"ack": "https://gw.example/ack/a1", "on_site": "https://gw.example/os/a1"})
    return incident_context(inc, site, OPENED + 1800, **extra)


INCIDENT_STAGES = [s for s in Stage if s != Stage.DIGEST]
HOTLINE_STAGES = {*RESIDENT_STAGES, Stage.UTILITY_REPORT}


@pytest.mark.parametrize("language", ["zh", "en"])
@pytest.mark.parametrize("category", sorted(OUTAGES))
@pytest.mark.parametrize("stage", INCIDENT_STAGES)
def test_every_stage_renders_with_the_building_the_time_and_for_residents_the_hotline(
    site: Site, stage: Stage, category: str, language: str
) -> None:
    msg = Messages().render(stage, language, context(site, stage, category))
    text = f"{msg.title}\n{msg.body}"
    assert msg.title and "\n" not in msg.title
    assert "1号楼" in text
    assert (OPENED_ZH if language == "zh" else OPENED_EN) in msg.body
    if stage in HOTLINE_STAGES:
        assert HOTLINE in msg.body
    if stage not in RESIDENT_STAGES and stage != Stage.UTILITY_REPORT:  # staff: the facts and the evidence
        assert "#17" in msg.title and "#17" in msg.body
        assert "domain:B1-" in msg.body and "96" in msg.body
        assert "main meter B1-main reads no voltage on any phase" in msg.body
    if stage in RESIDENT_STAGES:
        assert len(msg.body) <= 500, msg.body
        assert "main meter" not in msg.body and "domain:" not in msg.body


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_residents_notice_says_what_to_do_by_advice(site: Site, language: str) -> None:
    power = Messages().render(
        Stage.RESIDENTS_NOTICE, language, context(site, Stage.RESIDENTS_NOTICE, "power_outage")
    )
    water = Messages().render(
        Stage.RESIDENTS_NOTICE, language, context(site, Stage.RESIDENTS_NOTICE, "water_supply")
    )
    if language == "zh":
        assert power.title == "【停电通知】1号楼" and water.title == "【停水通知】1号楼"
        assert "电梯" in power.body and "储水" in power.body and "电梯" not in water.body
        assert "1号楼自3月2日 10:05起停电，约96户受影响" in power.body
    else:
        assert power.title == "Power cut: 1号楼" and water.title == "Water outage: 1号楼"
        assert "lifts" in power.body and "lifts" not in water.body and "stored" in water.body
        assert "1号楼 has had a power cut since 2 Mar 10:05, affecting about 96 households" in power.body


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_all_clear_gives_the_duration(site: Site, language: str) -> None:
    msg = Messages().render(Stage.ALL_CLEAR, language, context(site, Stage.ALL_CLEAR, "power_outage"))
    assert ("2小时15分" if language == "zh" else "2 h 15 min") in msg.body
    assert msg.title == ("【恢复供电】1号楼" if language == "zh" else "Power restored: 1号楼")


@pytest.mark.parametrize("language", ["zh", "en"])
@pytest.mark.parametrize("stage", [Stage.RESIDENTS_NOTICE, Stage.RESIDENTS_UPDATE, Stage.UTILITY_REPORT])
def test_the_expected_restoration_is_said_only_when_staff_set_one(
    site: Site, stage: Stage, language: str
) -> None:
    m = Messages()
    eta_local = "2026-03-02T14:00:00+08:00"
    with_eta = m.render(stage, language, context(site, stage, "power_outage", eta_local=eta_local))
    absent = m.render(stage, language, context(site, stage, "power_outage"))
    none = m.render(stage, language, context(site, stage, "power_outage", eta_local=None))
    eta = ETA_ZH if language == "zh" else ETA_EN
    assert eta in with_eta.body
    assert eta not in absent.body and absent == none
    if stage in RESIDENT_STAGES:  # the utility is asked for one when there is none
        word = "预计" if language == "zh" else "expect"
        assert word in with_eta.body and word not in absent.body


def test_dispatch_shows_only_the_links_it_has(site: Site) -> None:
    m = Messages()
    both = m.render(Stage.DISPATCH, "zh", context(site, Stage.DISPATCH, "power_outage"))
    assert (
        "确认接单：https://gw.example/ack/a1" in both.body
        and "到场签到：https://gw.example/os/a1" in both.body
    )
    ack = m.render(
        Stage.DISPATCH, "en", context(site, Stage.DISPATCH, "power_outage", links={"ack": "https://a/1"})
    )
    assert "Acknowledge: https://a/1" in ack.body and "On site" not in ack.body
    none = m.render(Stage.ESCALATION, "en", context(site, Stage.ESCALATION, "power_outage", links=None))
    assert "Acknowledge" not in none.body and "step 2" in none.title


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_digest_lists_the_notices_it_merges(language: str) -> None:
    items = [
        {"title": "【停电通知】1号楼", "body": "正文一"},
        {"title": "【停水通知】2号楼", "body": "正文二"},
    ]
    msg = Messages().render(Stage.DIGEST, language, {"items": items})
    assert "2" in msg.title
    assert (
        msg.body.index("【停电通知】1号楼") < msg.body.index("正文一") < msg.body.index("【停水通知】2号楼")
    )


def test_the_filters_say_times_durations_and_names_as_people_do() -> None:
    assert format_time("2026-03-02T10:05:41+08:00", "zh") == "3月2日 10:05"
    assert format_time("2026-03-02T10:05:41+08:00", "en") == "2 Mar 10:05"
    assert format_time(OPENED, "en", "Asia/Shanghai") == "2 Mar 10:05"
    assert format_duration(8100, "zh") == "2小时15分" and format_duration(8100, "en") == "2 h 15 min"
    assert format_duration(2700, "zh") == "45分钟" and format_duration(7200, "en") == "2 h"
    assert format_duration(20, "en") == "under a minute" and format_duration(93600, "zh") == "1天2小时"
    blds = [{"id": f"B{i}", "name": f"{i}号楼"} for i in range(1, 8)]
    assert format_names(blds[:2], "zh") == "1号楼、2号楼"
    assert format_names(blds[:3], "en") == "1号楼, 2号楼 and 3号楼"
    assert format_names(blds, "zh") == "1号楼、2号楼、3号楼、4号楼、5号楼等7栋楼"


def test_the_sample_context_has_the_keys_incident_context_gives(site: Site) -> None:
    real = context(site, Stage.RESIDENTS_NOTICE, "power_outage")
    sample = sample_context(Stage.RESIDENTS_NOTICE)
    # items belong to the digest, links and team to dispatch, planned/maintenance to a maintenance
    # window's notice
    assert set(sample) == set(real) | set(OPTIONAL) - {"items", "links", "planned", "maintenance", "team"}
    assert set(sample["incident"]) == set(real["incident"])
    assert set(sample["site"]) == set(real["site"])


# ---------------------------------------------------------------------------------------------- overrides


def override(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "templates"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_an_override_replaces_one_stage_and_leaves_the_others(tmp_path: Path, site: Site) -> None:
    notice = "title: 停电啦 {{ buildings|names }}\n{{ site.name }}：{{ site.hotline }}"
    folder = override(tmp_path, {"zh/residents_notice.j2": notice})
    m = Messages(folder)
    assert m.check() == []
    ctx = context(site, Stage.RESIDENTS_NOTICE, "power_outage")
    assert m.render(Stage.RESIDENTS_NOTICE, "zh", ctx).title == "停电啦 1号楼"
    assert m.render(Stage.RESIDENTS_NOTICE, "zh", ctx).body == f"阳光花园：{HOTLINE}"
    assert m.render(Stage.RESIDENTS_NOTICE, "en", ctx) == Messages().render(Stage.RESIDENTS_NOTICE, "en", ctx)
    shipped = Messages().render(Stage.RESIDENTS_UPDATE, "zh", ctx)
    assert m.render(Stage.RESIDENTS_UPDATE, "zh", ctx) == shipped
    assert m.template_path(Stage.RESIDENTS_NOTICE, "zh") == folder / "zh" / "residents_notice.j2"


def test_an_overridden_piece_shows_in_the_shipped_stages_that_include_it(tmp_path: Path, site: Site) -> None:
    folder = override(tmp_path, {"zh/_advice.j2": "请保持冷静。\n"})
    ctx = context(site, Stage.RESIDENTS_NOTICE, "power_outage")
    assert "请保持冷静。" in Messages(folder).render(Stage.RESIDENTS_NOTICE, "zh", ctx).body


def test_the_site_files_templates_dir_is_relative_to_the_site_file(tmp_path: Path) -> None:
    override(tmp_path, {"en/all_clear.j2": "title: ok\nall clear\n"})
    site = load_site(write_site(tmp_path, extra="  templates_dir: templates\n"))
    m = Messages.for_site(site)
    assert m.override == (tmp_path / "templates").resolve()
    ctx = context(site, Stage.ALL_CLEAR, "power_outage")
    assert m.render(Stage.ALL_CLEAR, "en", ctx).body == "all clear"


def test_a_syntax_error_is_file_and_line_from_check_and_a_template_problem_from_render(
    tmp_path: Path, site: Site
) -> None:
    folder = override(tmp_path, {"zh/staff_open.j2": "title: x\n第二行\n{% if incident.id %}\n没有结束\n"})
    path = folder / "zh" / "staff_open.j2"
    problems = Messages(folder).check()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:4: "), problems
    assert "endif" in problems[0]
    with pytest.raises(TemplateProblem) as err:
        Messages(folder).render(Stage.STAFF_OPEN, "zh", context(site, Stage.STAFF_OPEN, "power_outage"))
    assert err.value.path == str(path) and err.value.line == 4
    assert str(err.value) == problems[0]


@pytest.mark.parametrize("expr", ["{{ nonsense }}", "{{ incident.nonsense }}", "{{ buildings[5].name }}"])
def test_a_template_naming_an_unknown_variable_is_an_error(tmp_path: Path, site: Site, expr: str) -> None:
    folder = override(tmp_path, {"en/resolved.j2": f"title: x\nline two\n{expr}\n"})
    path = folder / "en" / "resolved.j2"
    with pytest.raises(TemplateProblem) as err:
        Messages(folder).render(Stage.RESOLVED, "en", context(site, Stage.RESOLVED, "power_outage"))
    assert str(err.value).startswith(f"{path}:3: "), str(err.value)
    assert any(p.startswith(f"{path}:3: ") for p in Messages(folder).check())


@pytest.mark.parametrize(
    "expr", ["{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ items.append(1) }}"]
)
def test_the_sandbox_refuses_attribute_access(tmp_path: Path, site: Site, expr: str) -> None:
    folder = override(tmp_path, {"en/staff_open.j2": f"title: x\n{expr}\n"})
    with pytest.raises(TemplateProblem) as err:
        Messages(folder).render(Stage.STAFF_OPEN, "en", context(site, Stage.STAFF_OPEN, "power_outage"))
    assert str(err.value).startswith(f"{folder / 'en' / 'staff_open.j2'}:2: ")
    assert "unsafe" in str(err.value) or "not allowed" in str(err.value)


def test_a_template_without_a_title_line_is_a_problem(tmp_path: Path, site: Site) -> None:
    folder = override(tmp_path, {"zh/flapping.j2": "反复发作\n"})
    with pytest.raises(TemplateProblem, match="the first line must be `title: "):
        Messages(folder).render(Stage.FLAPPING, "zh", context(site, Stage.FLAPPING, "power_outage"))


def test_check_names_files_that_are_no_stage_or_language(tmp_path: Path) -> None:
    folder = override(
        tmp_path,
        {"zh/residents_notise.j2": "title: x\ny\n", "fr/all_clear.j2": "title: x\ny\n", "zh/notes.txt": "-"},
    )
    problems = Messages(folder).check()
    assert f"{folder / 'zh' / 'residents_notise.j2'}:1: unknown stage 'residents_notise'" in problems[2]
    assert problems[0].startswith(f"{folder / 'fr'}: not a language folder")
    assert problems[1].startswith(f"{folder / 'zh' / 'notes.txt'}: not a template")
    assert Messages(tmp_path / "missing").check() == [
        f"{tmp_path / 'missing'}: templates_dir is not a folder"
    ]


def test_render_refuses_an_unknown_stage_or_language(site: Site) -> None:
    with pytest.raises(TemplateProblem, match="unknown stage"):
        Messages().render("nonsense", "zh", {})
    with pytest.raises(TemplateProblem, match="unknown language"):
        Messages().render(Stage.ALL_CLEAR, "fr", context(site, Stage.ALL_CLEAR, "power_outage"))


def test_the_shipped_templates_pass_their_own_check(tmp_path: Path) -> None:
    # an empty override folder of both languages: check renders every shipped stage against the samples
    (tmp_path / "zh").mkdir()
    (tmp_path / "en").mkdir()
    assert Messages(tmp_path).check() == []
