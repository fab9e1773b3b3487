"""Payload decoding and routing without a broker: numbers, JSON paths, Tasmota, Shelly, timestamps, errors."""

from __future__ import annotations

import json
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from drivers.mqtt.errors import (
    BadTimestamp,
    MalformedJson,
    MissingField,
    NotANumber,
    NotFinite,
    UnknownQuantity,
)
from drivers.mqtt.payloads import (
    decode_fields,
    decode_number,
    decode_shelly_gen1,
    decode_shelly_gen2,
    decode_tasmota,
    parse_json,
    parse_path,
    parse_timestamp,
    to_float,
)
from drivers.mqtt.router import Router
from drivers.mqtt.settings import make_subscription, subscription_problems

# Payloads as the devices send them (Tasmota 13/14 SENSOR telemetry, Shelly Pro 3EM Gen2 status and RPC).
TASMOTA_PLUG = (
    b'{"Time":"2026-03-10T14:22:05","ENERGY":{"TotalStartTime":"2025-11-02T09:14:51","Total":12.345,'
    b'"Yesterday":0.412,"Today":0.213,"Period":1,"Power":48,"ApparentPower":61,"ReactivePower":38,'
    b'"Factor":0.79,"Voltage":229,"Current":0.266,"Frequency":50}}'
)
TASMOTA_3PHASE = (
    b'{"Time":"2026-03-10T14:22:05","ENERGY":{"TotalStartTime":"2025-11-02T09:14:51","Total":100.5,'
    b'"Yesterday":1.2,"Today":0.5,"Power":[100,200,300],"ApparentPower":[110,210,310],'
    b'"ReactivePower":[10,20,30],"Factor":[0.91,0.95,0.97],"Frequency":[50,50,50],'
    b'"Voltage":[230,231,229],"Current":[0.47,0.91,1.35]},"DS18B20":{"Id":"01131B4C","Temperature":21.5}}'
)
SHELLY_EM0: dict[str, object] = {
    "id": 0,
    "a_current": 4.029, "a_voltage": 236.1, "a_act_power": 951.2, "a_aprt_power": 951.9, "a_pf": 1,
    "a_freq": 50, "b_current": 4.027, "b_voltage": 236.201, "b_act_power": -951.1, "b_aprt_power": 951.8,
    "b_pf": 1, "b_freq": 50, "c_current": 3.03, "c_voltage": 236.163, "c_act_power": 715.9,
    "c_aprt_power": 716.2, "c_pf": 1, "c_freq": 50, "n_current": None, "total_current": 11.086,
    "total_act_power": 716.081, "total_aprt_power": 2619.915, "user_calibrated_phase": [],
}  # fmt: skip
SHELLY_EMDATA0: dict[str, object] = {
    "id": 0, "a_total_act_energy": 2882.47, "a_total_act_ret_energy": 0, "b_total_act_energy": 1000,
    "b_total_act_ret_energy": 5, "c_total_act_energy": 4859.9, "c_total_act_ret_energy": 0,
    "total_act": 8742.37, "total_act_ret": 5,
}  # fmt: skip

DEVICES = {"B3-tank": "B3", "B3-pump": "B3", "shelly-3em": "B1", "B1-em": "B1"}


def router(*subs: dict[str, object], tz: str = "UTC") -> Router:
    return Router([make_subscription(**s) for s in subs], DEVICES, ZoneInfo(tz))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- scalars, paths, timestamps


def test_plain_number_payload() -> None:
    assert decode_number(b" 3.25\n", "pressure").values == {"pressure": 3.25}


@pytest.mark.parametrize(
    ("payload", "error", "says"),
    [
        (b"nan", NotFinite, "expected a finite number"),
        (b"-inf", NotFinite, "expected a finite number"),
        (b"ON", NotANumber, "'ON', expected a number"),
        (b"", MissingField, "empty payload"),
        (b"\xff\xfe", NotANumber, "not UTF-8"),
    ],
)
def test_plain_number_errors(payload: bytes, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        decode_number(payload, "pressure")


def test_to_float_accepts_bools_and_numeric_strings_refuses_containers() -> None:
    assert to_float(True, "x") == 1.0
    assert to_float("2.5", "x") == 2.5
    with pytest.raises(NotANumber, match="is a JSON dict"):
        to_float({}, "x")
    with pytest.raises(MissingField, match="null"):
        to_float(None, "x")


def test_field_paths_reach_nested_keys_and_list_elements() -> None:
    doc = {"data": {"pressure": 3.1}, "values": [7, 8], "rows": [{"v": 1}]}
    assert parse_path("data.pressure").get(doc) == 3.1
    assert parse_path("values[1]").get(doc) == 8
    assert parse_path("rows[0].v").get(doc) == 1
    assert parse_path("[0]").get([5]) == 5


def test_missing_field_names_the_missing_step() -> None:
    with pytest.raises(MissingField, match=r"no key 'pressure' at data"):
        parse_path("data.pressure").get({"data": {"level": 1}})
    with pytest.raises(MissingField, match=r"no element \[3\] at values"):
        parse_path("values[3]").get({"values": [1]})


@pytest.mark.parametrize("bad", ["", ".a", "a..b", "a.", "a[x]", "a[0]b", "a]"])
def test_bad_field_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid field path"):
        parse_path(bad)


def test_timestamps_epoch_seconds_millis_and_iso() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    assert parse_timestamp(1_700_000_000, UTC, "t") == 1_700_000_000.0
    assert parse_timestamp(1_700_000_000_250, UTC, "t") == 1_700_000_000.25
    assert parse_timestamp("1700000000.5", UTC, "t") == 1_700_000_000.5
    assert parse_timestamp("2023-11-14T22:13:20Z", UTC, "t") == 1_700_000_000.0
    assert parse_timestamp("2023-11-15T06:13:20+08:00", UTC, "t") == 1_700_000_000.0
    # Without an offset the time is the site's local time (Tasmota sends local time).
    assert parse_timestamp("2023-11-15T06:13:20", shanghai, "t") == 1_700_000_000.0


@pytest.mark.parametrize("bad", ["yesterday", None, True, -5, float("nan"), {}])
def test_bad_timestamps(bad: object) -> None:
    with pytest.raises(BadTimestamp, match="expected epoch seconds, epoch milliseconds or ISO 8601"):
        parse_timestamp(bad, UTC, "field 'ts'")


def test_malformed_json_says_where() -> None:
    with pytest.raises(MalformedJson, match=r"Expecting value at line 1 column 11"):
        parse_json(b'{"level": }')


def test_json_without_fields_takes_numeric_top_level_keys() -> None:
    out = decode_fields({"level": 2.5, "battery": 97, "unit": "m", "ok": True, "meta": {"x": 1}}, {})
    assert out.values == {"level": 2.5, "battery": 97.0}
    assert decode_fields({"unit": "m"}, {}).problems[0].cause == "no_value"


# --------------------------------------------------------------------------- Tasmota


def test_tasmota_single_phase_energy_maps_to_common_quantities() -> None:
    out = decode_tasmota(parse_json(TASMOTA_PLUG))
    assert out.problems == []
    assert out.values == {
        "voltage_l1": 229.0,
        "current_l1": 0.266,
        "power_total": 48.0,
        "apparent_power_total": 61.0,
        "reactive_power_total": 38.0,
        "power_factor": 0.79,
        "frequency": 50.0,
        "energy_import": 12.345,
        "energy_import_today": 0.213,
    }


def test_tasmota_three_phase_lists_become_per_phase_quantities() -> None:
    out = decode_tasmota(parse_json(TASMOTA_3PHASE))
    assert out.problems == []
    v = out.values
    assert (v["voltage_l1"], v["voltage_l2"], v["voltage_l3"]) == (230.0, 231.0, 229.0)
    assert (v["power_l1"], v["power_l2"], v["power_l3"], v["power_total"]) == (100.0, 200.0, 300.0, 600.0)
    assert v["apparent_power_total"] == 630.0
    assert v["current_l3"] == 1.35
    assert v["power_factor_l2"] == 0.95
    assert v["frequency"] == 50.0
    assert v["energy_import"] == 100.5


def test_tasmota_without_energy_is_a_missing_field() -> None:
    out = decode_tasmota({"Time": "x", "DS18B20": {"Temperature": 20}})
    assert out.values == {}
    assert out.problems[0].cause == "no_value"


def test_tasmota_bad_value_costs_that_value_only() -> None:
    out = decode_tasmota({"ENERGY": {"Voltage": "NaN", "Power": 10}})
    assert out.values == {"power_total": 10.0}
    assert [p.cause for p in out.problems] == ["nan"]


# --------------------------------------------------------------------------- Shelly


@pytest.mark.parametrize(
    ("kind", "channel", "payload", "expected"),
    [
        ("power", "0", b"951.20", {"power_l1": 951.2}),
        ("voltage", "1", b"236.2", {"voltage_l2": 236.2}),
        ("current", "2", b"3.03", {"current_l3": 3.03}),
        ("pf", "0", b"0.98", {"power_factor_l1": 0.98}),
        ("reactive_power", "0", b"-12.5", {"reactive_power_l1": -12.5}),
        ("total", "2", b"48599.5", {"energy_import_l3": pytest.approx(48.5995)}),
        ("total_returned", "0", b"1000", {"energy_export_l1": 1.0}),
    ],
)
def test_shelly_gen1_emeter_topics(
    kind: str, channel: str, payload: bytes, expected: dict[str, float]
) -> None:
    assert decode_shelly_gen1(kind, channel, payload).values == expected


def test_shelly_gen1_unknown_kind_or_channel() -> None:
    with pytest.raises(UnknownQuantity, match="'energy' is not one of"):
        decode_shelly_gen1("energy", "0", b"1")
    with pytest.raises(UnknownQuantity, match="channel '5'"):
        decode_shelly_gen1("power", "5", b"1")


def test_shelly_gen2_em_status_maps_phases_and_totals() -> None:
    out = decode_shelly_gen2(SHELLY_EM0)
    assert out.problems == []
    v = out.values
    assert (v["voltage_l1"], v["voltage_l2"], v["voltage_l3"]) == (236.1, 236.201, 236.163)
    assert (v["current_l1"], v["power_l2"], v["apparent_power_l3"]) == (4.029, -951.1, 716.2)
    assert v["power_factor_l1"] == 1.0
    assert v["frequency"] == 50.0
    assert v["power_total"] == 716.081
    assert v["apparent_power_total"] == 2619.915
    assert v["current_total"] == 11.086
    assert "current_n" not in v  # null: no neutral CT


def test_shelly_gen2_notify_status_with_energy_counters() -> None:
    rpc = {
        "src": "shelly-3em",
        "method": "NotifyStatus",
        "params": {"ts": 1_700_000_000.5, "em:0": SHELLY_EM0, "emdata:0": SHELLY_EMDATA0},
    }
    out = decode_shelly_gen2(rpc)
    assert out.values["voltage_l1"] == 236.1
    assert out.values["energy_import"] == pytest.approx(8.74237)
    assert out.values["energy_export"] == pytest.approx(0.005)
    assert out.values["energy_import_l1"] == pytest.approx(2.88247)
    assert out.values["energy_export_l2"] == pytest.approx(0.005)


def test_shelly_gen2_other_notifications_have_no_reading() -> None:
    out = decode_shelly_gen2({"method": "NotifyStatus", "params": {"switch:0": {"output": True}}})
    assert out.values == {} and out.problems[0].cause == "no_value"


# --------------------------------------------------------------------------- routing a message to a Sample


def test_route_number_topic_template() -> None:
    r = router({"topic": "sensors/{building}/{device}/{quantity}"})
    routed = r.route("sensors/B3/B3-tank/level", b"2.75", received=1000.0)
    assert routed.problems == []
    s = routed.sample
    assert s is not None
    assert (s.device, s.ts, dict(s.values), s.quality) == ("B3-tank", 1000.0, {"level": 2.75}, "good")


def test_retained_message_is_marked_stale() -> None:
    r = router({"topic": "sensors/{building}/{device}/{quantity}"})
    routed = r.route("sensors/B3/B3-tank/level", b"2.75", received=1.0, retained=True)
    assert routed.sample is not None and routed.sample.quality == "stale"


def test_route_json_with_paths_device_field_and_time_field() -> None:
    r = router(
        {
            "topic": "site/+/json",
            "format": "json",
            "device_field": "meta.id",
            "time_field": "meta.ts",
            "fields": {"level": "data.level", "battery": "values[1]"},
        }
    )
    payload = json.dumps(
        {"meta": {"id": "B3-tank", "ts": 1_700_000_000_000}, "data": {"level": 1.5}, "values": [0, 88]}
    )
    routed = r.route("site/x/json", payload.encode(), received=5.0)
    assert routed.problems == []
    assert routed.sample is not None
    assert routed.sample.device == "B3-tank"
    assert routed.sample.ts == 1_700_000_000.0
    assert dict(routed.sample.values) == {"level": 1.5, "battery": 88.0}


def test_partial_json_keeps_good_values_and_marks_decode_error() -> None:
    r = router({"topic": "j/{device}", "format": "json", "fields": {"level": "level", "temp": "temp"}})
    routed = r.route("j/B3-tank", b'{"level": 1.0, "temp": NaN}', received=1.0)
    assert routed.sample is not None
    assert dict(routed.sample.values) == {"level": 1.0}
    assert routed.sample.quality == "decode_error"
    assert [p.cause for p in routed.problems] == ["nan"]


def test_bad_timestamp_keeps_receipt_time_and_is_counted() -> None:
    r = router({"topic": "j/{device}", "format": "json", "time_field": "ts"})
    routed = r.route("j/B3-tank", b'{"level": 1.0, "ts": "soon"}', received=42.0)
    assert routed.sample is not None and routed.sample.ts == 42.0
    assert routed.sample.quality == "decode_error"
    assert [p.cause for p in routed.problems] == ["time"]


def test_route_tasmota_with_local_time_and_extra_field() -> None:
    r = router(
        {
            "topic": "tele/{device}/SENSOR",
            "format": "tasmota",
            "time_field": "Time",
            "fields": {"temperature": "DS18B20.Temperature"},
        },
        tz="Asia/Shanghai",
    )
    routed = r.route("tele/B3-pump/SENSOR", TASMOTA_3PHASE, received=1.0)
    assert routed.problems == []
    assert routed.sample is not None
    assert routed.sample.values["temperature"] == 21.5
    assert routed.sample.values["power_total"] == 600.0
    assert routed.sample.ts == parse_timestamp("2026-03-10T14:22:05+08:00", UTC, "t")


def test_route_tasmota_payload_with_only_extra_fields() -> None:
    r = router({"topic": "tele/{device}/SENSOR", "format": "tasmota", "fields": {"t": "DS18B20.Temperature"}})
    routed = r.route("tele/B3-pump/SENSOR", b'{"DS18B20": {"Temperature": 20}}', received=1.0)
    assert routed.problems == []
    assert routed.sample is not None and dict(routed.sample.values) == {"t": 20.0}


def test_route_shelly_gen1_and_gen2() -> None:
    r = router(
        {"topic": "shellies/{device}/emeter/{channel}/{quantity}", "format": "shelly"},
        {"topic": "{device}/status/em:0", "format": "shelly"},
    )
    gen1 = r.route("shellies/B1-em/emeter/1/voltage", b"231.4", received=1.0)
    assert gen1.sample is not None and dict(gen1.sample.values) == {"voltage_l2": 231.4}
    gen2 = r.route("shelly-3em/status/em:0", json.dumps(SHELLY_EM0).encode(), received=1.0)
    assert gen2.sample is not None and gen2.sample.device == "shelly-3em"
    assert gen2.sample.values["power_total"] == 716.081


@pytest.mark.parametrize(
    ("topic", "payload", "cause", "says"),
    [
        ("j/B3-tank", b'{"level": ', "json", "malformed JSON"),
        ("j/B3-tank", b'{"level": NaN}', "nan", "finite"),
        ("j/B3-tank", b'{"level": "high"}', "type", "expected a number"),
        ("j/B3-tank", b'{"other": 1}', "no_value", "no key 'level'"),
        ("j/ghost", b'{"level": 1}', "unknown_device", "'ghost'"),
        ("nowhere/B3-tank", b"1", "unknown_topic", "matches no subscription"),
    ],
)
def test_route_errors_are_typed(topic: str, payload: bytes, cause: str, says: str) -> None:
    r = router({"topic": "j/{device}", "format": "json", "fields": {"level": "level"}})
    routed = r.route(topic, payload, received=1.0)
    assert routed.sample is None
    assert [p.cause for p in routed.problems] == [cause]
    assert says in routed.problems[0].message


def test_device_in_the_wrong_building_is_refused() -> None:
    r = router({"topic": "sensors/{building}/{device}/{quantity}"})
    routed = r.route("sensors/B1/B3-tank/level", b"1", received=1.0)
    assert routed.sample is None
    assert "names building 'B1' but device 'B3-tank' is in building 'B3'" in routed.problems[0].message


def test_first_matching_subscription_wins() -> None:
    r = router(
        {"topic": "s/B3-tank/level", "device": "B3-tank", "quantity": "level"},
        {"topic": "s/#", "format": "json", "device": "B3-tank"},
    )
    routed = r.route("s/B3-tank/level", b"3", received=1.0)
    assert routed.sample is not None and dict(routed.sample.values) == {"level": 3.0}


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"topic": "s/{device}"}, "format number needs the quantity"),
        ({"topic": "s/{quantity}"}, "format number needs the device"),
        ({"topic": "s/{device}", "quantity": "q", "time_field": "t"}, "format number takes no fields"),
        ({"topic": "s/x", "format": "json"}, "needs the device"),
        ({"topic": "s/{device}", "format": "json", "fields": {"a": "b..c"}}, "fields.a: invalid field path"),
        ({"topic": "s/{device}/{channel}", "format": "shelly"}, "needs both {channel} and {quantity}"),
        ({"topic": "s/{device}/{channel}/{quantity}"}, "{channel} is used by format shelly"),
        ({"topic": "s/{device}", "format": "xml"}, "unknown format 'xml'"),
        ({"topic": "s/{device}/#/x", "quantity": "q"}, "'#' must be the last level"),
        ({"topic": "s/{device}", "device": "d", "quantity": "q"}, "and device is set too"),
    ],
)
def test_subscription_problems_say_what_is_expected(kwargs: dict[str, object], says: str) -> None:
    kwargs.setdefault("format", "number")
    problems = subscription_problems(**kwargs)  # type: ignore[arg-type]
    assert any(says in p for p in problems), problems
