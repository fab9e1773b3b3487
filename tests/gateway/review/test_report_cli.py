"""`meterwatch report` in-process (typer's runner, the real command): the files it writes from a real incident
store, and the one-line error (exit 1, nothing written) for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway.cli.main import app
from gateway.config import Site
from tests.gateway.review.report_fixture import ID, Outage, make_site, write_outage


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = make_site(tmp_path)
    # where `meterwatch run --state-dir state` keeps it
    write_outage(tmp_path / "state" / "incidents.sqlite", site, Outage())
    return site


def report(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["report", *[str(a) for a in args]])


def one_line_error(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meterwatch report: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_writes_markdown_html_json_and_the_charts_it_shows(tmp_path: Path, site: Site) -> None:
    out = tmp_path / "out"
    result = report(ID, site.path, "--state-dir", tmp_path / "state", "-o", out, "--format", "md,html,json")
    assert result.exit_code == 0, result.stderr
    written = sorted(Path(p).name for p in result.stdout.split())
    assert written == ["report-7.html", "report-7.json", "report-7.md"]  # no evidence kept: no chart
    assert sorted(p.name for p in out.iterdir()) == written  # no temporary file left behind
    md = (out / "report-7.md").read_text("utf-8")
    assert md.startswith("# 事件报告 #7")
    data = json.loads((out / "report-7.json").read_text("utf-8"))
    assert data["summary"]["incident_id"] == ID and data["lang"] == "zh"


def test_english_and_the_default_formats(tmp_path: Path, site: Site) -> None:
    out = tmp_path / "en"
    result = report(ID, site.path, "--state-dir", tmp_path / "state", "-o", out, "--language", "en")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["report-7.html", "report-7.md"]
    assert (out / "report-7.html").read_text("utf-8").count("Incident report #7") >= 1


def test_the_monthly_review_of_the_month(tmp_path: Path, site: Site) -> None:
    # the fixture's outage is in October 2026 (Asia/Shanghai); the site file may come after --month
    out = tmp_path / "month"
    result = report("--month", "2026-10", site.path, "--state-dir", tmp_path / "state", "-o", out,
                    "--format", "md,html,csv,json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    names = ["review-2026-10.csv", "review-2026-10.html", "review-2026-10.json", "review-2026-10.md"]
    assert sorted(p.name for p in out.iterdir()) == names
    rows = (out / "review-2026-10.csv").read_text("utf-8").strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{ID},")
    assert json.loads((out / "review-2026-10.json").read_text("utf-8"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["99"], "no incident 99 in "),
        (["abc"], "INCIDENT: expected an incident id (a whole number from 1), got 'abc'"),
        (["0"], "got '0'"),
        ([], "give an incident id (meterwatch report 42 SITE.yaml) or --month YYYY-MM"),
        ([str(ID), "--format", "pdf"], "--format: unknown format 'pdf'; expected some of md, html, json"),
        ([str(ID), "--format", ","], "--format: empty"),
        ([str(ID), "--format", "csv"], "unknown format 'csv'"),  # a month's format, not an incident's
        ([str(ID), "--language", "fr"], "--language: unknown language 'fr'; expected zh or en"),
        ([str(ID), "--month", "2026-11"], "give an incident id or --month, not both"),
        (["--month", "2026-13"], "--month: '2026-13' has month 13; expected 01 to 12"),
        (
            ["--month", "2026-11", "--format", "png"],
            "unknown format 'png'; expected some of md, html, csv, json",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, site: Site, args: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    positional = args[:1] if args and not args[0].startswith("--") else []
    options = args[len(positional) :]
    result = report(*positional, site.path, "--state-dir", tmp_path / "state", "-o", out, *options)
    one_line_error(result, expected)
    assert not out.exists()


def test_no_store_in_the_state_dir(tmp_path: Path, site: Site) -> None:
    result = report(ID, site.path, "--state-dir", tmp_path / "elsewhere", "-o", tmp_path / "out")
    one_line_error(result, f"{tmp_path / 'elsewhere' / 'incidents.sqlite'}: no incident store here")
    assert not (tmp_path / "elsewhere").exists()  # looking for a store never makes one


def test_a_store_that_is_not_one(tmp_path: Path, site: Site) -> None:
    state = tmp_path / "other"
    state.mkdir()
    (state / "incidents.sqlite").write_bytes(b"not a database, just some bytes" * 100)
    for args in ([ID], ["--month", "2026-10"]):
        result = report(*args, site.path, "--state-dir", state, "-o", tmp_path / "out")
        one_line_error(result, f"{state / 'incidents.sqlite'}: cannot read the incident store: ")
    assert not (tmp_path / "out").exists()


def test_the_default_state_dir_is_the_daemons(
    tmp_path: Path, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # meterwatch run's default: var/<site id> under the folder it runs in
    monkeypatch.chdir(tmp_path)
    result = report(ID, site.path, "-o", tmp_path / "out")
    one_line_error(result, "var/livetest/incidents.sqlite: no incident store here")
    (tmp_path / "var").mkdir()
    (tmp_path / "state").rename(tmp_path / "var" / "livetest")
    result = report(ID, site.path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr


def test_output_that_is_not_a_folder(tmp_path: Path, site: Site) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = report(ID, site.path, "--state-dir", tmp_path / "state", "-o", blocker)
    one_line_error(result, f"-o {blocker}: ")
    assert blocker.read_text() == "x"


def test_a_broken_site_file_names_its_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {id: x, timezone: Mars/Olympus}\n", encoding="utf-8")
    result = report(ID, bad, "--state-dir", tmp_path / "state")
    assert result.exit_code == 1
    assert f"{bad}:1" in result.stderr and "Mars/Olympus" in result.stderr
