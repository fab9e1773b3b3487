"""Telegraf-testcases style: every directory in tests/cases is a site file, a trace and what must come out.

expected.yaml holds either `errors:` (substrings of the config errors, file:line included) or `incidents:`
(the incidents that are not merged, in opening order; only the fields given are compared), plus optionally
`merged:`, `timeline_events:` (event names of the single incident), `tail:` (virtual time to run past the
trace's end), `env:` (e.g. TZ, applied to the process for the run: calendar rules must not care) and
`site:`/`trace:`/`mapping:` paths ({repo} expands to the repository root; a recorded data set outside the
repository is referenced, never copied, and its absence fails the case). Times `*_within_s` are seconds
after the trace's first event.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_site
from gateway.core.durations import parse_duration
from gateway.incidents.replay import incident_record, run_replay
from gateway.incidents.trace import load_mapping, read_trace
from tests.helpers import REPO

CASES = REPO / "tests" / "cases"
ALL = sorted(p.name for p in CASES.iterdir() if (p / "expected.yaml").exists())


@pytest.fixture
def case_env(request: pytest.FixtureRequest) -> Any:
    saved: dict[str, str | None] = {}

    def apply(env: dict[str, str]) -> None:
        for k, v in env.items():
            saved.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        time.tzset()

    yield apply
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    time.tzset()


def _path(text: str, case_dir: Path) -> Path:
    return (case_dir / text.replace("{repo}", str(REPO))).resolve()


def _check(
    actual: dict[str, Any], want: dict[str, Any], start: float, inc_ts: dict[str, float | None]
) -> None:
    for key, value in want.items():
        if key.endswith("_within_s"):
            field = key[: -len("_within_s")]
            ts = inc_ts[field]
            assert ts is not None, f"{field} is not set: {actual}"
            lo, hi = value
            assert lo <= ts - start <= hi, f"{field} at +{ts - start:.1f}s, expected within {value}: {actual}"
        elif key == "symptoms_count":
            assert len(actual["symptoms"]) == value, actual
        elif key == "symptoms":
            assert actual["symptoms"] == sorted(value), actual
        else:
            assert actual[key] == value, f"{key}: {actual[key]!r} != {value!r} in {actual}"


@pytest.mark.parametrize("case", ALL)
def test_case(case: str, case_env: Any) -> None:
    d = CASES / case
    exp = yaml.safe_load((d / "expected.yaml").read_text()) or {}
    case_env(exp.get("env") or {})
    site_path = _path(exp.get("site", "site.yaml"), d)
    if "errors" in exp:
        with pytest.raises(ConfigError) as info:
            load_site(site_path)
        got = [str(i) for i in info.value.issues]
        for want in exp["errors"]:
            assert any(want in g for g in got), f"no error like {want!r} in {got}"
        assert len(got) == len(exp["errors"]), got
        return
    site = load_site(site_path)
    trace_path = _path(exp.get("trace", "trace.csv"), d)
    if not trace_path.exists():
        pytest.fail(f"{case}: trace {trace_path} is missing (a shared data set? see expected.yaml)")
    mapping = load_mapping(_path(exp["mapping"], d)) if "mapping" in exp else None
    trace = read_trace(trace_path, site.config.site.timezone, mapping)
    result = run_replay(site, trace.events, tail=parse_duration(exp.get("tail", 0)))
    tz = site.config.site.timezone
    got = result.incidents()
    records = [incident_record(i, tz) for i in got]
    assert len(records) == len(exp["incidents"]), "\n".join(str(r) for r in records)
    for inc, rec, want in zip(got, records, exp["incidents"], strict=True):
        stamps = {
            "opened": inc.opened_at,
            "resolved": inc.resolved_at,
            "first_evidence": inc.first_evidence_at,
        }
        _check(rec, want, result.start, stamps)
    merged = [i for i in result.incidents(include_merged=True) if i.state == "merged"]
    assert len(merged) == len(exp.get("merged", [])), merged
    for inc, want in zip(merged, exp.get("merged", []), strict=True):
        _check(incident_record(inc, tz), want, result.start, {})
    if "timeline_events" in exp:
        (only,) = got
        events = [t.event for t in result.timeline(only.id) if t.event != "symptom"]
        assert events == exp["timeline_events"]
