"""README.md must stay true: the two commands on top, the configuration reference and the default rules."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.docs import (
    PROFILE_END,
    PROFILE_START,
    RULES_END,
    RULES_START,
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
