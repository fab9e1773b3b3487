"""String and info points, sentinels: codec vectors, profile validation, and what the bus consumers make of
a DeviceInfo (metrics checked by the real promtool, the live view, the sink and the rules ignoring it)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from drivers.modbus.codec import NotAvailable, decode, decode_text, encode, encode_text
from drivers.modbus.planner import plan_reads
from gateway.cli.live import LiveView
from gateway.config import ConfigError, load_site
from gateway.config.profile import Point, builtin_profiles
from gateway.core.bus import Bus
from gateway.core.types import DeviceInfo, Sample
from gateway.incidents.site_model import build_engine
from gateway.observe.metrics import Exported, make_registry
from gateway.observe.presence import DevicePresence
from tests.fixtures.sim import write_sim_site

PROMTOOL = "/usr/bin/promtool"


def text_point(count: int = 4, **kw: object) -> Point:
    data = {"quantity": "model_name", "function": "holding", "address": 0, "type": "string", "count": count}
    return Point.model_validate({**data, **kw})


def num_point(type_: str, **kw: object) -> Point:
    return Point.model_validate({"quantity": "x", "function": "holding", "address": 0, "type": type_, **kw})


# ---------------------------------------------------------------------------------------------------------
# codec: strings


def test_big_endian_string_vector() -> None:
    # "SDM630" in registers 0x5344 0x4D36 0x3330, NUL-padded to 4 registers.
    words = [0x5344, 0x4D36, 0x3330, 0x0000]
    assert decode_text(text_point(), words) == "SDM630"
    assert encode_text(text_point(), "SDM630") == words


def test_little_endian_bytes_within_each_register() -> None:
    p = text_point(byte_order="little")
    words = [0x4453, 0x364D, 0x3033, 0x0000]  # same bytes, low byte first in each register
    assert decode_text(p, words) == "SDM630"
    assert encode_text(p, "SDM630") == words


def test_odd_length_and_first_nul_ends_the_text() -> None:
    # "v1.2" then "3" then NUL: the text stops at the NUL, garbage behind it is not read.
    assert decode_text(text_point(), [0x7631, 0x2E32, 0x3300, 0x4142]) == "v1.23"
    assert encode_text(text_point(), "v1.23") == [0x7631, 0x2E32, 0x3300, 0x0000]


def test_space_padding_is_stripped() -> None:
    # Devices pad with spaces as often as with NULs; leading blanks of a right-aligned field go too.
    assert decode_text(text_point(), [0x2041, 0x4243, 0x2020, 0x2020]) == "ABC"


def test_unprintable_and_non_ascii_bytes_read_as_replacement() -> None:
    # 0x07 (bell) and 0xE9 are not printable ASCII: never let them into a log line or a label.
    assert decode_text(text_point(2), [0x4107, 0xE942]) == "A\ufffd\ufffdB"
    assert decode_text(text_point(2, encoding="latin-1"), [0x4107, 0xE942]) == "A\ufffdéB"


def test_full_width_text_has_no_terminator() -> None:
    assert decode_text(text_point(2), encode_text(text_point(2), "ABCD")) == "ABCD"


def test_text_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"model_name \(holding 0\).*9 bytes, the point holds 8"):
        encode_text(text_point(), "123456789")
    with pytest.raises(ValueError, match="is not ascii"):
        encode_text(text_point(), "café")
    with pytest.raises(ValueError, match="expected 4 register"):
        decode_text(text_point(), [0x4142])
    with pytest.raises(ValueError, match="read them with decode_text"):
        decode(text_point(), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="has no text"):
        decode_text(num_point("uint16"), [1])


# ---------------------------------------------------------------------------------------------------------
# codec: sentinels


def test_integer_sentinel_matches_raw_unsigned_or_signed() -> None:
    for sentinel in (0xFFFF, -1):
        p = num_point("int16", not_available=[sentinel], scale=0.1)
        with pytest.raises(NotAvailable, match="0xFFFF"):
            decode(p, [0xFFFF])
        assert decode(p, [0xFFFE]) == -0.2
    p = num_point("uint32", not_available=[0xFFFFFFFF], word_order="little")
    with pytest.raises(NotAvailable):
        decode(p, [0xFFFF, 0xFFFF])
    assert decode(p, [0xFFFF, 0x7FFF]) == 0x7FFFFFFF


def test_sentinel_is_compared_before_mask_and_scale() -> None:
    p = num_point("uint16", mask=0x00FF, not_available=[0xFFFF])
    with pytest.raises(NotAvailable):
        decode(p, [0xFFFF])
    assert decode(p, [0x12FF]) == 0xFF


def test_float_sentinels_nan_and_value() -> None:
    p = num_point("float32", not_available=[float("nan"), -1.0], scale=10)
    with pytest.raises(NotAvailable):
        decode(p, [0x7FC0, 0x0000])  # quiet NaN
    with pytest.raises(NotAvailable):
        decode(p, [0xFFFF, 0xFFFF])  # another NaN pattern
    with pytest.raises(NotAvailable):
        decode(p, encode(num_point("float32"), -1.0))
    assert decode(p, encode(num_point("float32"), 2.5)) == 25.0
    # Without the sentinel NaN is returned as it is (the poller drops it as kind "nan").
    assert math.isnan(decode(num_point("float32"), [0x7FC0, 0]))


def test_sentinel_from_yaml_spellings() -> None:
    p = num_point("float64", not_available=["NaN", 0])
    assert math.isnan(float(p.not_available[0]))
    with pytest.raises(NotAvailable):
        decode(p, [0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------------------
# profile validation


def test_strings_are_info_and_need_a_count() -> None:
    assert text_point().info
    with pytest.raises(ValidationError, match="needs count"):
        num_point("string")
    with pytest.raises(ValidationError, match="cannot have info: false"):
        text_point(info=False)
    assert num_point("uint32", info=True).info
    assert not num_point("uint32").info


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"type": "int16", "not_available": [1.5]}, "not a raw int16"),
        ({"type": "uint16", "not_available": [0x10000]}, "not a raw uint16"),
        ({"type": "int16", "not_available": [-0x8001]}, "not a raw int16"),
        ({"type": "bit", "bit": 1, "not_available": [1]}, "numeric types, not bit"),
    ],
)
def test_bad_sentinels_are_clear_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Point.model_validate({"quantity": "x", "function": "holding", "address": 0, **kw})


def test_string_of_a_coil_is_refused() -> None:
    with pytest.raises(ValidationError, match="must have type bit"):
        Point.model_validate(
            {"quantity": "x", "function": "coil", "address": 0, "type": "string", "count": 2}
        )


# ---------------------------------------------------------------------------------------------------------
# DeviceInfo on the bus: metrics, live view; the sink and the rules ignore it


def info_event() -> DeviceInfo:
    return DeviceInfo(
        "T-sdm630", 1.7e9, {"serial_number": "12345678", "firmware": 'v2 "beta"\\x', "device": "x"}
    )


def test_device_info_metric_passes_promtool(tmp_path: Path) -> None:
    site = load_site(write_sim_site(tmp_path))
    view = DevicePresence(site)
    view.feed(Sample("T-sdm630", 1.7e9, {"voltage_l1": 230.0}))
    view.feed(info_event())
    text = generate_latest(make_registry(site, Exported(presence=view))).decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("meterwatch_device_info{")]
    assert len(lines) == 1, text
    line = lines[0]
    assert 'device="T-sdm630"' in line and 'serial_number="12345678"' in line
    assert 'info_device="x"' in line  # a field cannot shadow the device label
    assert line.endswith(" 1.0")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    if proc.returncode not in (0, 3):  # 3: lint warnings only (e.g. about other families' names)
        pytest.fail(f"promtool rejected the exposition: {proc.stdout}{proc.stderr}")
    assert "meterwatch_device_info" not in proc.stdout + proc.stderr


def test_live_view_shows_device_info(tmp_path: Path) -> None:
    site = load_site(write_sim_site(tmp_path))
    view = LiveView.attach(site, Bus(), plain=True)
    view.apply(info_event())
    line = next(ln for ln in view.snapshot_lines() if ln.startswith("T-sdm630"))
    assert "serial_number='12345678'" in line
    rendered = view.table()
    assert rendered.columns[-1].header == "info"
    assert "12345678" in str(next(iter(rendered.columns[-1].cells)))


def test_rules_engine_ignores_device_info(tmp_path: Path) -> None:
    # The sink skips every event that is not a Sample (Forwarder._take); the rules engine must not choke.
    site = load_site(write_sim_site(tmp_path))
    engine = build_engine(site, start=1.7e9)
    assert list(engine.feed(info_event())) == []
    assert engine.unknown_devices == 0


def test_info_points_are_planned_apart_from_the_poll_cycle() -> None:
    sdm630 = builtin_profiles()["sdm630"]
    cycle = plan_reads(sdm630.points, 1)
    info = plan_reads(sdm630.points, 1, info=True)
    assert all(not p.info for r in cycle for p in r.points)
    assert [(r.function, r.address, r.count) for r in info] == [("holding", 0xFC00, 2)]
    assert [p.quantity for p in info[0].points] == ["serial_number"]


def test_a_device_polling_only_info_points_is_a_config_error(tmp_path: Path) -> None:
    path = write_sim_site(tmp_path)
    text = path.read_text(encoding="utf-8").replace(
        "profile: sdm630, poll_interval: 1s}",
        "profile: sdm630, poll_interval: 1s, quantities: [serial_number]}",
        1,
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert ":14: devices[0].quantities: lists only info points" in str(info.value)
