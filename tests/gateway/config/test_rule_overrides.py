"""A `rules:` entry with a default rule's id changes only the fields it gives; errors name file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, effective_rules, load_site
from gateway.config.default_rules import DEFAULT_RULES
from gateway.config.rules import RULE_KINDS, RuleSpec
from tests.gateway.config.test_config import MINIMAL, write
from tests.helpers import REPO

KINDS = ", ".join(RULE_KINDS)


def _default(rule_id: str) -> RuleSpec:
    return next(r for r in DEFAULT_RULES if r.id == rule_id)


def _issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_site(path)
    return [str(i) for i in info.value.issues]


def _line(text: str, needle: str) -> int:
    """1-based line of the first line of `text` containing `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_enabled_false_drops_a_default_rule_and_check_passes(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rules:\n  - {id: power.outage, enabled: false}\n")
    site = load_site(path)
    ids = [r.id for r in effective_rules(site.config.rules)]
    assert "power.outage" not in ids
    assert ids == [r.id for r in DEFAULT_RULES if r.id != "power.outage"]
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_a_one_field_override_keeps_every_other_field_of_the_default(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL + "rules:\n  - {id: water.low_pressure, for: 2m}\n"))
    (rule,) = site.config.rules or []
    default = _default("water.low_pressure")
    assert rule.for_ == 120.0 and default.for_ == 60.0
    assert rule.model_dump(by_alias=True) == {**default.model_dump(by_alias=True), "for": 120.0}
    (effective,) = [r for r in effective_rules(site.config.rules) if r.id == "water.low_pressure"]
    assert effective == rule


def test_a_derived_field_of_the_default_is_derived_again_from_the_merged_fields(tmp_path: Path) -> None:
    # power.undervoltage writes no pct: its 90/92 come from its check, so another check gets its own
    site = load_site(write(tmp_path, MINIMAL + "rules:\n  - {id: power.undervoltage, check: overvoltage}\n"))
    (rule,) = site.config.rules or []
    assert rule.model_dump() == {
        **_default("power.undervoltage").model_dump(),
        "check": "overvoltage",
        "pct": 110.0,
        "clear_pct": 108.0,
    }


def test_a_kind_given_with_an_override_must_be_the_defaults(tmp_path: Path) -> None:
    ok = load_site(write(tmp_path, MINIMAL + "rules:\n  - {id: water.burst, kind: rate, window: 20s}\n"))
    assert [(r.kind, getattr(r, "window", None)) for r in ok.config.rules or []] == [("rate", 20.0)]
    text = MINIMAL + "rules:\n  - id: water.burst\n    kind: threshold\n    below: 0.5\n"
    path = write(tmp_path, text)
    assert _issues(path) == [
        f"{path}:{_line(text, 'kind: threshold')}: rules[0].kind: kind 'threshold' is not the kind of the "
        "default rule water.burst (rate): leave `kind` out to change only the fields given, or give a new "
        "rule a new id"
    ]


def test_a_new_rule_without_kind_is_told_the_kinds_at_its_line(tmp_path: Path) -> None:
    text = (
        MINIMAL + "rules:\n  - {id: power.outage, enabled: false}\n  - id: p1.low\n    quantity: pressure\n"
    )
    path = write(tmp_path, text)
    (issue,) = _issues(path)
    assert issue.startswith(
        f"{path}:{_line(text, 'id: p1.low')}: rules[1]: `kind` is missing: expected one of {KINDS}"
    ), issue
    assert "discriminator" not in issue


def test_a_misspelt_default_id_without_kind_names_the_default_it_is_close_to(tmp_path: Path) -> None:
    text = MINIMAL + "rules:\n  - {id: power.outgae, enabled: false}\n"
    path = write(tmp_path, text)
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:{_line(text, 'outgae')}: rules[0]: `kind` is missing"), issue
    assert "did you mean power.outage?" in issue


def test_an_unknown_kind_is_named_at_its_line(tmp_path: Path) -> None:
    text = MINIMAL + "rules:\n  - id: p1.low\n    kind: treshold\n    quantity: pressure\n"
    path = write(tmp_path, text)
    assert _issues(path) == [
        f"{path}:{_line(text, 'kind: treshold')}: rules[0].kind: unknown rule kind 'treshold'; "
        f"expected one of {KINDS}"
    ]


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("for: -1s", "for", "expected a duration"),
        ("pct: 500", "pct", "200"),
    ],
)
def test_a_bad_value_in_an_override_points_at_its_field_and_line(
    tmp_path: Path, entry: str, field: str, words: str
) -> None:
    text = MINIMAL + f"rules:\n  - {{id: water.burst, window: 20s}}\n  - id: power.outage\n    {entry}\n"
    path = write(tmp_path, text)
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:{_line(text, entry)}: rules[1].{field}: "), issue
    assert words in issue and issue.count("got ") <= 1, issue


def test_a_check_across_fields_of_an_override_says_the_rest_is_the_defaults(tmp_path: Path) -> None:
    text = MINIMAL + "rules:\n  - {id: water.low_pressure, above: 6}\n"
    path = write(tmp_path, text)
    (issue,) = _issues(path)
    assert issue.startswith(f"{path}:{_line(text, 'above: 6')}: rules[0]: give exactly one of below or above")
    assert "the default rule water.low_pressure" in issue
    fixed = "rules:\n  - {id: water.low_pressure, above: 6, below: null, clear_above: null}\n"
    (rule,) = load_site(write(tmp_path, MINIMAL + fixed)).config.rules or []
    assert (getattr(rule, "above", None), getattr(rule, "below", None)) == (6.0, None)
