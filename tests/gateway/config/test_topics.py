"""Topic templates: the filter sent to the broker and the names read back from a topic."""

from __future__ import annotations

import re

import pytest

from gateway.config.topics import TemplateError, parse_template


def test_template_becomes_a_wildcard_filter_and_extracts_names() -> None:
    t = parse_template("sensors/{building}/{device}/{quantity}")
    assert t.filter == "sensors/+/+/+"
    assert t.names == {"building", "device", "quantity"}
    assert t.match("sensors/B3/B3-tank/level") == {"building": "B3", "device": "B3-tank", "quantity": "level"}


@pytest.mark.parametrize(
    "topic",
    ["sensors/B3/B3-tank", "sensors/B3/B3-tank/level/extra", "other/B3/B3-tank/level", "sensors"],
)
def test_template_rejects_topics_outside_its_filter(topic: str) -> None:
    assert parse_template("sensors/{building}/{device}/{quantity}").match(topic) is None


def test_plain_plus_and_hash_match_as_in_mqtt_and_capture_nothing() -> None:
    t = parse_template("tele/{device}/+/#")
    assert t.filter == "tele/+/+/#"
    assert t.match("tele/plug1/x") == {"device": "plug1"}  # '#' also matches the parent level
    assert t.match("tele/plug1/x/y/z") == {"device": "plug1"}
    assert t.match("tele/plug1") is None
    assert parse_template("#").match("anything/at/all") == {}


def test_plain_filter_without_names() -> None:
    t = parse_template("tele/plug1/SENSOR")
    assert t.filter == "tele/plug1/SENSOR"
    assert t.match("tele/plug1/SENSOR") == {}
    assert t.match("tele/plug2/SENSOR") is None


def test_wildcard_filters_do_not_match_dollar_topics() -> None:
    assert parse_template("#").match("$SYS/broker/uptime") is None
    assert parse_template("+/broker/uptime").match("$SYS/broker/uptime") is None
    assert parse_template("$SYS/#").match("$SYS/broker/uptime") == {}


def test_empty_level_is_captured_as_empty() -> None:
    assert parse_template("s/{device}/{quantity}").match("s//p") == {"device": "", "quantity": "p"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected a topic filter"),
        ("a/#/b", "'#' must be the last level"),
        ("a/x+/b", "allowed only as a whole level"),
        ("a/{device}x", "allowed only as a whole level"),
        ("a/{devcie}", "unknown placeholder {devcie}"),
        ("a/{device}/{device}", "appears twice"),
    ],
)
def test_bad_templates_say_what_is_expected(text: str, says: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(says)):
        parse_template(text)
