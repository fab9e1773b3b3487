"""The bounds of one MQTT message, without a broker: size, JSON depth, phases, values, names, quantities.

Issue 8 item 1: one 1.5 MB Tasmota payload decoded on the event loop for 1.4 s into an 800k-quantity
Sample; names such as `level_x y` or a 60 KB one reached the database. Each bound drops what is over it,
keeps the rest of the message, and is counted under its own cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from paho.mqtt.client import MQTTMessage

from drivers.mqtt.errors import TooDeep
from drivers.mqtt.payloads import decode_tasmota, parse_json, quantity_problem
from drivers.mqtt.router import Routed, Router
from drivers.mqtt.settings import MqttSettings, make_subscription
from drivers.mqtt.subscriber import MqttSubscriber, _Inbound
from gateway.app.mqtt import mqtt_settings
from gateway.config import ConfigError, load_site
from gateway.core.bus import Bus
from gateway.core.types import Sample

DEVICES = {"B3-tank": "B3", "B3-pump": "B3", "B1-em": "B1"}
SUBSCRIPTIONS = (
    make_subscription("sensors/{building}/{device}/{quantity}"),
    make_subscription("tele/{device}/SENSOR", format="tasmota"),
    make_subscription("json/{device}", format="json"),  # no fields: every numeric top-level key
)
# The incident's payload: 400k phases in one Tasmota ENERGY list, about 1.5 MB.
HUGE_TASMOTA = b'{"ENERGY":{"Power":[' + b", ".join([b"1.0"] * 400_000) + b"]}}"


def router(**limits: int) -> Router:
    return Router(SUBSCRIPTIONS, DEVICES, ZoneInfo("UTC"), **limits)


def causes(routed: Routed) -> list[str]:
    return [p.cause for p in routed.problems]


# --------------------------------------------------------------------------------------- payload size


def test_payload_over_max_payload_is_dropped_before_parsing() -> None:
    assert len(HUGE_TASMOTA) > 1_500_000
    routed = router().route("tele/B3-pump/SENSOR", HUGE_TASMOTA, received=1.0)
    assert routed.sample is None
    assert causes(routed) == ["too_large"]
    assert f"payload of {len(HUGE_TASMOTA)} bytes is over max_payload (65536)" in routed.problems[0].message
    # Not parsed at all: malformed JSON over the limit is too_large, not json.
    assert causes(router().route("json/B3-tank", b"{" * 70_000, received=1.0)) == ["too_large"]


def test_max_payload_is_exact_and_the_size_on_arrival_counts() -> None:
    r = router(max_payload=100)
    at_limit = b'{"level": ' + b" " * 88 + b"1}"
    assert len(at_limit) == 100
    ok = r.route("json/B3-tank", at_limit, received=1.0)
    assert ok.problems == [] and ok.sample is not None and dict(ok.sample.values) == {"level": 1.0}
    assert causes(r.route("json/B3-tank", at_limit + b" ", received=1.0)) == ["too_large"]
    # The subscriber cuts a large payload on arrival and passes its real size.
    cut = r.route("json/B3-tank", b"x" * 101, received=1.0, size=1_500_000)
    assert "1500000 bytes" in cut.problems[0].message


# --------------------------------------------------------------------------------------- JSON depth


def test_json_deeper_than_16_levels_is_refused() -> None:
    ok = b'{"a":[{"b":[{"c":[{"d":[{"e":[{"f":[{"g":[{"h":[1]}]}]}]}]}]}]}]}'  # 16 levels
    assert parse_json(ok) is not None
    with pytest.raises(TooDeep, match="deeper than 16 levels"):
        parse_json(b"[" * 17 + b"]" * 17)
    with pytest.raises(TooDeep):
        parse_json(b'{"level": 1, "x": ' + b'{"a":' * 20 + b"1" + b"}" * 20 + b"}")
    # Brackets inside strings are text, not nesting.
    assert parse_json(json.dumps({"level": 1, "note": '[[[[[[[[[[[[[[[[[[[[{{{{{{{{\\"'}).encode())
    routed = router().route(
        "json/B3-tank", b'{"level": 1, "x": ' + b"[" * 20 + b"]" * 20 + b"}", received=1.0
    )
    assert routed.sample is None and causes(routed) == ["too_deep"]


def test_nesting_that_exhausts_the_parser_is_counted_not_raised() -> None:
    # json.loads recurses per level and raises RecursionError near 1000 levels.
    deep = b"[" * 30_000 + b"]" * 30_000
    with pytest.raises(TooDeep):
        parse_json(deep)
    routed = router(max_payload=100_000).route("json/B3-tank", deep, received=1.0)
    assert causes(routed) == ["too_deep"]
    assert len(routed.problems[0].message) < 200


def test_json_depth_in_utf16_is_checked_too() -> None:
    assert parse_json(json.dumps({"level": [[1]]}).encode("utf-16")) == {"level": [[1]]}
    with pytest.raises(TooDeep):
        parse_json((b"[" * 17 + b"]" * 17).decode().encode("utf-16"))


# --------------------------------------------------------------------------------------- phases


def test_tasmota_phase_arrays_keep_the_first_three() -> None:
    out = decode_tasmota({"ENERGY": {"Power": [10, 20, 30, 40, 50], "Voltage": [230, 231, 229], "Total": 5}})
    assert out.values == {
        "power_l1": 10.0,
        "power_l2": 20.0,
        "power_l3": 30.0,
        # no power_total: the sum of 3 of 5 phases would be wrong
        "voltage_l1": 230.0,
        "voltage_l2": 231.0,
        "voltage_l3": 229.0,
        "energy_import": 5.0,
    }
    assert [p.cause for p in out.problems] == ["too_many_phases"]
    assert "ENERGY.Power has 5 phases, expected at most 3" in out.problems[0].message


def test_a_huge_phase_array_within_max_payload_costs_three_values() -> None:
    payload = b'{"ENERGY":{"Power":[' + b",".join([b"1"] * 30_000) + b'],"Voltage":230}}'
    assert len(payload) < 65536
    routed = router().route("tele/B3-pump/SENSOR", payload, received=1.0)
    assert routed.sample is not None
    assert dict(routed.sample.values) == {
        "power_l1": 1.0,
        "power_l2": 1.0,
        "power_l3": 1.0,
        "voltage_l1": 230.0,
    }
    assert routed.sample.quality == "decode_error"
    assert causes(routed) == ["too_many_phases"]


# --------------------------------------------------------------------------------------- values per message


def test_more_than_max_values_keeps_the_first() -> None:
    doc = {f"q{i}": i for i in range(100)}
    routed = router().route("json/B3-tank", json.dumps(doc).encode(), received=1.0)
    assert routed.sample is not None
    assert list(routed.sample.values) == [f"q{i}" for i in range(64)]
    assert routed.sample.quality == "decode_error"
    assert causes(routed) == ["too_many_values"]
    assert (
        "100 readings in one message, over max_values (64); the last 36 dropped" in routed.problems[0].message
    )

    few = router(max_values=2).route("json/B3-tank", b'{"a": 1, "b": 2, "c": 3}', received=1.0)
    assert few.sample is not None and dict(few.sample.values) == {"a": 1.0, "b": 2.0}


# --------------------------------------------------------------------------------------- quantity names


@pytest.mark.parametrize(
    "name", ["level_x y", "level_a,b", "Level", "1level", "_level", "quality", "a" * 65, "é", "level\n"]
)
def test_names_that_are_no_quantity(name: str) -> None:
    assert quantity_problem(name) is not None


@pytest.mark.parametrize("name", ["level", "voltage_l1", "a" * 64, "x", "level___name__", "t2"])
def test_names_that_are_quantities(name: str) -> None:
    assert quantity_problem(name) is None


def test_bad_names_in_a_payload_are_dropped_and_the_rest_kept() -> None:
    doc = {
        "level": 1.5,
        "level_x y": 2,
        "level_a,b": 3,
        "quality": 4,
        "Temp": 5,
        "n" * 60_000: 6,
        "battery": 97,
    }
    routed = router().route("json/B3-tank", json.dumps(doc).encode(), received=1.0)
    assert routed.sample is not None
    assert dict(routed.sample.values) == {"level": 1.5, "battery": 97.0}
    assert routed.sample.quality == "decode_error"
    assert causes(routed) == ["bad_quantity"]  # once per message
    message = routed.problems[0].message
    assert "'level_x y' is not a quantity name" in message and "(and 4 more in this message)" in message
    assert len(message) < 300  # the 60 KB name never reaches a log line


@pytest.mark.parametrize("name", ["level_x y", "level_a,b", "quality", "x" * 60_000])
def test_bad_names_from_a_topic_are_dropped(name: str) -> None:
    routed = router().route(f"sensors/B3/B3-tank/{name}", b"2.5", received=1.0)
    assert routed.sample is None
    assert causes(routed) == ["bad_quantity"]
    assert len(routed.problems[0].message) < 300


# ----------------------------------------------------------------------------------- quantities per device


def test_a_device_gets_no_new_quantity_beyond_max_quantities() -> None:
    r = router(max_quantities=3)
    first = r.route("json/B3-tank", b'{"a": 1, "b": 2, "c": 3, "d": 4}', received=1.0)
    assert first.sample is not None and dict(first.sample.values) == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert causes(first) == ["too_many_quantities"]
    assert "device 'B3-tank' already has 3 quantities (max_quantities); 1 new one(s) dropped: 'd'" in (
        first.problems[0].message
    )
    # Known quantities keep arriving; new ones do not; other devices have their own budget.
    again = r.route("json/B3-tank", b'{"a": 5, "e": 6}', received=2.0)
    assert again.sample is not None and dict(again.sample.values) == {"a": 5.0}
    assert causes(again) == ["too_many_quantities"]
    other = r.route("json/B1-em", b'{"d": 1, "e": 2}', received=3.0)
    assert other.problems == [] and other.sample is not None and set(other.sample.values) == {"d", "e"}


def test_default_max_quantities_over_many_topics() -> None:
    r = router()
    kept = 0
    dropped = 0
    for i in range(100):
        routed = r.route(f"sensors/B3/B3-tank/level_{i}", b"1", received=float(i))
        kept += routed.sample is not None
        dropped += causes(routed) == ["too_many_quantities"]
    assert (kept, dropped) == (64, 36)
    assert len(r.quantities["B3-tank"]) == 64


# --------------------------------------------------------------------------------------- what held before


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        (b'{"level": NaN}', "nan"),
        (b'{"level": Infinity}', "nan"),
        (b'{"level": -Infinity}', "nan"),
        (b'{"level": 1e400}', "nan"),
        (b'{"level": 1' + b"0" * 400 + b"}", "nan"),  # an integer no float can hold
        (b'{"level": 1' + b"0" * 5000 + b"}", "json"),  # over Python's 4300-digit limit
        (b'{"level": \xff\xfe}', "json"),  # not UTF-8
    ],
)
def test_non_finite_and_undecodable_values_are_counted(payload: bytes, cause: str) -> None:
    routed = router().route("json/B3-tank", payload, received=1.0)
    assert routed.sample is None
    assert causes(routed) == [cause]


def test_huge_integer_timestamp_is_a_bad_timestamp() -> None:
    r = Router(
        [make_subscription("j/{device}", format="json", fields={"level": "level"}, time_field="ts")],
        DEVICES,
        ZoneInfo("UTC"),
    )
    routed = r.route("j/B3-tank", b'{"level": 1, "ts": 1' + b"0" * 400 + b"}", received=7.0)
    assert routed.sample is not None and routed.sample.ts == 7.0
    assert causes(routed) == ["time"]


# --------------------------------------------------------------------------------------- the subscriber


def _settings(**over: int) -> MqttSettings:
    return MqttSettings(
        site="t", client_id="limits-test", subscriptions=SUBSCRIPTIONS, devices=DEVICES, **over
    )


def _message(topic: str, payload: bytes) -> MQTTMessage:
    msg = MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


async def _deliver(sub: MqttSubscriber, *messages: MQTTMessage) -> None:
    """What paho's thread and the consumer do with each message (QoS 0: nothing to acknowledge)."""
    sub._loop = asyncio.get_running_loop()
    for m in messages:
        sub._on_message(None, None, m)  # type: ignore[arg-type]
    while sub._inbox:
        item = sub._inbox.popleft()
        assert isinstance(item, _Inbound)
        sub._qos0_taken += 1
        await sub._handle(None, item)


async def test_subscriber_keeps_no_more_than_max_payload_of_a_large_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus()
    tap = bus.subscribe("t", maxsize=100)
    sub = MqttSubscriber(_settings(max_payload=1000), bus)
    sub._loop = asyncio.get_running_loop()
    sub._on_message(None, None, _message("tele/B3-pump/SENSOR", HUGE_TASMOTA))  # type: ignore[arg-type]
    item = sub._inbox.popleft()
    sub._qos0_taken += 1
    assert isinstance(item, _Inbound)
    assert len(item.payload) == 1001  # what waits on the loop is cut, whatever the broker sent
    assert item.size == len(HUGE_TASMOTA)

    caplog.set_level(logging.WARNING, logger="meterwatch.mqtt")
    await _deliver(
        sub,
        *[_message("tele/B3-pump/SENSOR", HUGE_TASMOTA)] * 3,
        _message("sensors/B3/B3-tank/level_x y", b"1"),
        _message("sensors/B3/B3-tank/level", b"2.5"),
    )
    assert dict(sub.stats.decode_errors) == {"too_large": 3, "bad_quantity": 1}
    samples = []
    while (e := tap.get_nowait()) is not None:
        if isinstance(e, Sample):
            samples.append(e)
    assert [dict(s.values) for s in samples] == [{"level": 2.5}]
    logged = [r.getMessage() for r in caplog.records if r.name == "meterwatch.mqtt"]
    assert sum("mqtt too_large " in m for m in logged) == 1, logged
    assert sum("mqtt bad_quantity " in m for m in logged) == 1, logged


async def test_100k_unknown_devices_and_topics_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="meterwatch.mqtt")
    sub = MqttSubscriber(_settings(), Bus())
    for batch in range(10):  # below inbox_limit: what the broker delivers while the loop keeps up
        await _deliver(sub, *(_message(f"sensors/B3/ghost-{batch}-{i}/level", b"1") for i in range(10_000)))
    await _deliver(sub, *(_message(f"legacy/meter-{i}/" + "x" * 1000, b"1") for i in range(1_000)))
    assert dict(sub.stats.decode_errors) == {"unknown_device": 100_000, "unknown_topic": 1_000}
    assert sub.stats.messages == 101_000
    logged = [r.getMessage() for r in caplog.records if r.name == "meterwatch.mqtt"]
    assert len(logged) == 2, logged[:5]
    assert all(len(m) < 600 for m in logged)
    # Distinct topics do not grow the once-log (a 64 KB topic each would be a memory leak).
    assert len(sub.once.seen) == 2


# --------------------------------------------------------------------------------------- the site file

SITE = """\
site: {id: limits, timezone: UTC}
buildings:
  - id: B1
devices:
  - {id: tank, building: B1, source: mqtt}
mqtt:
  subscriptions:
    - topic: sensors/{building}/{device}/{quantity}
"""


def test_limits_from_the_site_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    s = mqtt_settings(load_site(path))
    assert s is not None
    assert (s.max_payload, s.max_values, s.max_quantities) == (65536, 64, 64)

    path.write_text(SITE + "  max_payload: 4096\n  max_values: 8\n  max_quantities: 16\n")
    s = mqtt_settings(load_site(path))
    assert s is not None
    assert (s.max_payload, s.max_values, s.max_quantities) == (4096, 8, 16)
    sub = MqttSubscriber(s, Bus())
    assert (sub.router.max_payload, sub.router.max_values, sub.router.max_quantities) == (4096, 8, 16)

    path.write_text(SITE + "  max_values: 0\n")
    with pytest.raises(ConfigError, match="max_values"):
        load_site(path)


def test_receive_maximum_from_the_site_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    s = mqtt_settings(load_site(path))
    assert s is not None and s.receive_maximum == 1000
    path.write_text(SITE + "  receive_maximum: 200\n")
    s = mqtt_settings(load_site(path))
    assert s is not None and s.receive_maximum == 200
    path.write_text(SITE + "  receive_maximum: 0\n")
    with pytest.raises(ConfigError, match="receive_maximum"):
        load_site(path)
