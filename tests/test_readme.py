"""README.md must stay true: the two commands on top, the configuration reference and the default rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from gateway.config.rules import RULE_KINDS
from gateway.tools.docs import (
    PROFILE_END,
    PROFILE_START,
    RULES_END,
    RULES_START,
    _rows,
    current_block,
    default_rules,
    profile_reference,
    reference,
)

README = Path(__file__).parents[1] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8")[:400]
    assert "make demo" in head and "make test" in head


def test_configuration_reference_matches_the_models() -> None:
    assert current_block(README) == reference().strip(), (
        "README's configuration reference is out of date: "
        "run `python -m gateway.tools.docs --write README.md`"
    )


def test_default_rules_table_matches_the_code() -> None:
    assert current_block(README, RULES_START, RULES_END) == default_rules().strip(), (
        "README's table of default rules is out of date: run `python -m gateway.tools.docs --write README.md`"
    )


def test_profile_reference_matches_the_profile_model_and_the_shipped_profiles() -> None:
    assert current_block(README, PROFILE_START, PROFILE_END) == profile_reference().strip(), (
        "README's profile reference is out of date: run `python -m gateway.tools.docs --write README.md`"
    )


def _meanings(block: str) -> dict[str, str]:
    """field -> meaning, for every row of the field tables in a block."""
    out: dict[str, str] = {}
    for row in block.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            out[cells[0].strip("`")] = cells[3]
    return out


def test_reference_shows_the_yaml_keys_one_section_per_rule_kind_and_every_meaning() -> None:
    block = current_block(README)
    meanings = _meanings(block)
    assert "rules[].for" in meanings and "rules[].clear_for" in meanings
    assert not [f for f in meanings if f.endswith("for_")], "the YAML key is `for`"
    assert "for_" not in block
    for kind in RULE_KINDS:
        assert block.count(f"#### rules[] with kind: {kind}\n") == 1, kind
    assert block.count("| `rules[].id` |") == 1, "the fields every rule kind takes are listed once"
    profile = _meanings(current_block(README, PROFILE_START, PROFILE_END))
    empty = [f for f, meaning in {**meanings, **profile}.items() if not meaning]
    assert not empty, f"rows without a meaning: {empty}"


def test_the_generator_refuses_a_field_without_a_description() -> None:
    class Section(BaseModel):
        told: int = Field(default=1, description="a field that says what it is")
        untold: int = 2

    with pytest.raises(ValueError, match="untold"):
        _rows(Section, "section.", {Section})


def test_the_first_site_of_the_walk_through_is_valid(tmp_path: Path) -> None:
    from gateway.config import load_site

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your first site") : text.index("## Commands")]
    block = section[
        section.index("```yaml") + len("```yaml") : section.index("```", section.index("```yaml") + 7)
    ]
    site = tmp_path / "site.yaml"
    site.write_text("\n".join(line[3:] for line in block.splitlines()), encoding="utf-8")
    loaded = load_site(site)
    assert [d.profile for d in loaded.config.devices] == ["sdm630"]
