"""A rule's hold time is written `for:` in a site file; `for_` (the Python field name) is an unknown key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_site
from gateway.config.default_rules import DEFAULT_RULES
from tests.gateway.config.test_config import MINIMAL, write

RULE = """\
rules:
  - id: water.low_pressure
    kind: threshold
    quantity: pressure
    below: 1.0
    {key}: 90s
"""


def test_for_sets_how_long_the_condition_must_hold(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL + RULE.format(key="for")))
    (rule,) = site.config.rules or []
    assert rule.for_ == 90.0


def test_for_underscore_is_an_unknown_field_named_by_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + RULE.format(key="for_"))
    line = (MINIMAL + RULE).splitlines().index("    {key}: 90s") + 1
    with pytest.raises(ConfigError) as info:
        load_site(path)
    (issue,) = info.value.issues
    assert str(issue).startswith(f"{path}:{line}: rules[0].for_: unknown field"), str(issue)


def test_the_default_rules_built_in_code_keep_their_hold_times() -> None:
    by_id = {r.id: r.for_ for r in DEFAULT_RULES}
    assert by_id["power.outage"] == 5.0 and by_id["power.undervoltage"] == 300.0
