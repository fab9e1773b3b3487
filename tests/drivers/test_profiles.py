"""The shipped profiles: names, common quantity names and units, and the verified register facts."""

from __future__ import annotations

import pytest

from gateway.config.profile import Point, Profile, builtin_profiles

NAMES = {"sdm630", "sdm120", "dtsu666", "ddsu666", "rs485-pressure", "tuf2000m"}
UNITS = {
    "voltage_l1": "V", "voltage_l2": "V", "voltage_l3": "V", "voltage_l1_l2": "V", "voltage_l2_l3": "V",
    "voltage_l3_l1": "V", "current_l1": "A", "current_l2": "A", "current_l3": "A", "power_l1": "W",
    "power_l2": "W", "power_l3": "W", "power_total": "W", "reactive_power_total": "var",
    "apparent_power_total": "VA", "power_factor": "", "frequency": "Hz", "energy_import": "kWh",
    "energy_export": "kWh", "pressure": "bar", "flow": "m3/h", "velocity": "m/s", "flow_total": "m3",
    "error_code": "", "pipe_empty": "", "signal_quality": "", "pressure_decimals": "",
}  # fmt: skip


def test_all_six_profiles_load() -> None:
    assert set(builtin_profiles()) >= NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_common_quantity_units(name: str) -> None:
    profile = builtin_profiles()[name]
    for p in profile.points:
        if p.quantity in UNITS:
            assert p.unit == UNITS[p.quantity], f"{name}.{p.quantity}"


def test_single_phase_meters_use_l1_and_total() -> None:
    for name in ("sdm120", "ddsu666"):
        q = set(builtin_profiles()[name].quantities)
        assert {"voltage_l1", "current_l1", "power_total", "energy_import"} <= q
        assert not q & {"voltage_l2", "power_l1"}


def test_verified_register_facts() -> None:
    p = builtin_profiles()
    sdm = p["sdm630"]
    assert (sdm.point("voltage_l1").function, sdm.point("voltage_l1").pdu) == ("input", 0)
    assert sdm.point("power_total").pdu == 0x34 and sdm.point("energy_import").pdu == 0x48
    assert p["sdm120"].serial.baudrate == 2400
    dtsu = p["dtsu666"]
    assert dtsu.point("voltage_l1").pdu == 0x2006  # phase, not line-to-line 0x2000
    assert dtsu.point("voltage_l1").function == "holding"
    assert (dtsu.point("current_l1").scale, dtsu.point("frequency").scale) == (0.001, 0.01)
    assert p["ddsu666"].point("power_total").scale == 1000
    tuf = p["tuf2000m"]
    assert tuf.point("flow").pdu == 0 and tuf.point("flow").word_order == "little"
    assert tuf.point("error_code").pdu == 71 and tuf.point("pipe_empty").bit == 3
    assert tuf.point("signal_quality").mask == 0xFF and tuf.point("signal_quality").pdu == 91
    pressure = p["rs485-pressure"].point("pressure")
    assert (pressure.type, pressure.pdu, pressure.decimals_register) == ("int16", 4, 3)


def test_address_notations_agree() -> None:
    a = Point(quantity="x", ref=30001, type="float32")
    b = Point(quantity="x", function="input", reg=1, type="float32")
    c = Point(quantity="x", function="input", address=0, type="float32")
    assert a.pdu == b.pdu == c.pdu == 0 and a.function == "input"
    assert Point(quantity="x", ref=40072).pdu == 71


def test_mask_only_on_integers() -> None:
    with pytest.raises(ValueError, match="integer types only"):
        Point(quantity="x", function="holding", address=0, type="float32", mask=0xFF)
    with pytest.raises(ValueError, match="needs bit"):
        Point(quantity="x", function="holding", address=0, type="bit")


def test_duplicate_quantity_rejected() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        Profile.model_validate(
            {"name": "x", "manufacturer": "m", "model": "m", "kind": "power",
             "points": [{"quantity": "a", "ref": 30001}, {"quantity": "a", "ref": 30003}]}
        )  # fmt: skip
