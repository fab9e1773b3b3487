"""`make demo`'s whole loop, as a new user watches it in a plain log: a power cut detected as one outage
incident, the staff notice and the dispatch arriving at the demo's local receiver, the dispatch acknowledged
by the demo with the real `meterwatch ack` against the running daemon, the residents' all-clear, and the
incident report written by `meterwatch report` at the path the demo prints last, after which it stops.

Everything is real: the demo as a subprocess (`python -m gateway.cli.demo --plain`) with its simulators,
mosquitto, the gateway with its outbox, apprise and HTTP API, the receiver, and the two commands as
subprocesses of the demo. The scenario is a shortened one (--scenario): B1's power cut from 3 s to 30 s
on a copy of the example site on free ports whose power.outage rule clears after 10 s of good readings
(the example's default is 60 s). The test waits on the demo's output lines; nothing is timed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.demo_start import example_on_free_ports
from gateway.cli.demo_receiver import parse_notice
from tests.procwatch import Watched

SCENARIO = """\
name: short-cut
description: B1's power cut from 3 s to 30 s, the loop only
timeline:
  - {at: 3s, cut_power: B1, note: one power outage incident}
  - {at: 30s, restore_power: B1}
"""
BUDGET = 240  # s for each wait: generous, only a demo that never shows the step fails
OUTAGE = re.compile(r"^#(\d+) firing +critical +power outage: supply domain B1-power")
REPORT = re.compile(r"^demo: incident report: (.+\.html)$")


def short_demo(directory: Path) -> tuple[Path, Path]:
    site, _ = example_on_free_ports(directory)
    doc = yaml.safe_load(site.read_text(encoding="utf-8"))
    doc["rules"] = [{"id": "power.outage", "clear_for": "10s"}]
    site.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    scenario = directory / "short-cut.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    return site, scenario


def first(lines: list[str], pattern: str) -> int | None:
    return next((i for i, ln in enumerate(lines) if re.search(pattern, ln)), None)


def test_the_demo_plays_the_whole_loop_and_prints_the_report_path(tmp_path: Path) -> None:
    site, scenario = short_demo(tmp_path)
    output = tmp_path / "demo-output"
    demo = Watched(
        "gateway.cli.demo",
        [str(site), "--plain", "--scenario", str(scenario), "--output", str(output)],
        cwd=tmp_path,
    )
    try:
        demo.wait_for(lambda out: any(OUTAGE.match(ln) for ln in out), BUDGET, "the outage incident", "out")
        incident = next(m.group(1) for ln in demo.lines("out") if (m := OUTAGE.match(ln)))
        staff = rf"^notice: \d\d:\d\d:\d\d staff +<- \[critical\] #{incident} power outage"
        demo.wait_for(lambda out: first(out, staff) is not None, BUDGET, "the staff notice received", "out")
        acking = rf"^demo: \d\d:\d\d:\d\d acknowledging incident {incident} as the on-call engineer \(\w+\): "
        acking += rf"meterwatch ack {incident} --url http://127\.0\.0\.1:\d+"
        acked = rf"^demo: \d\d:\d\d:\d\d +meterwatch ack: acknowledged incident {incident}\b"
        demo.wait_for(lambda out: first(out, acked) is not None, BUDGET, "the ack through the CLI", "out")
        all_clear = r"^notice: \d\d:\d\d:\d\d residents +<- Power restored: Building 1"
        demo.wait_for(lambda out: first(out, all_clear) is not None, BUDGET, "the all-clear received", "out")
        demo.wait_for(lambda out: any(REPORT.match(ln) for ln in out), BUDGET, "the report's path", "out")
        code = demo.proc.wait(timeout=BUDGET)  # the loop is over: the demo stops by itself
    finally:
        demo.kill()
    assert code == 0, demo.dump()
    out = demo.lines("out")
    dispatch = rf"^notice: \d\d:\d\d:\d\d oncall-team +<- \[dispatch\] #{incident} "
    links = r"^notice: \d\d:\d\d:\d\d +links: http://127\.0\.0\.1:\d+/ack/\S+ http://127\.0\.0\.1:\d+/on-site/\S+$"
    patterns = {"staff": staff, "dispatch": dispatch, "links": links, "acking": acking, "acked": acked}
    found = {name: first(out, p) for name, p in {**patterns, "all_clear": all_clear}.items()}
    assert None not in found.values(), (found, demo.dump())
    at = {name: i for name, i in found.items() if i is not None}
    # staff and the on-call team hear at once (each channel has its own sender, either may come first), the
    # dispatch's links on the row after it; then the acknowledgement and, the power back, the all-clear
    assert at["links"] == at["dispatch"] + 1, (at, demo.dump())
    assert max(at["staff"], at["dispatch"]) < at["acking"] < at["acked"] < at["all_clear"], at
    assert REPORT.match(out[-1]), demo.dump()  # the path is the last thing the demo says
    report = Path(REPORT.match(out[-1]).group(1))  # type: ignore[union-attr]
    assert report.is_file() and report.parent.parent == output, report
    markdown = report.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown.startswith(f"# Incident report #{incident}: power outage · Building 1"), markdown[:200]
    assert re.search(r"Time to acknowledge \(dispatched → acknowledged\) \| \d+ s \|", markdown), markdown
    assert f"#{incident}" in report.read_text(encoding="utf-8")
    assert not any("Traceback" in ln for ln in demo.lines("err")), demo.dump()


def test_a_notice_is_shown_by_its_channel_title_and_first_line_that_says_something() -> None:
    n = parse_notice(
        "/residents",
        {"x-meterwatch-key": "incident:3/all_clear/residents%3AB1/residents"},
        b'{"version": "1.0", "title": "Power restored: Building 1", '
        b'"message": "Dear residents,\\nPower is back in Building 1.\\nThank you.", "type": "info"}',
        0.0,
    )
    assert (n.channel, n.title, n.first_line) == (
        "residents",
        "Power restored: Building 1",
        "Power is back in Building 1.",
    )
    assert n.parts() == [(3, "all_clear", "residents:B1")]
    odd = parse_notice("/staff?x=1", {}, b"not json at all", 0.0)  # shown as it came, never an error
    assert (odd.channel, odd.title, odd.first_line, odd.parts()) == ("staff", "", "not json at all", [])
