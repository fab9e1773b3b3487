from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_site
from tests.helpers import REPO

EXAMPLE = REPO / "deploy/examples/compound.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


MINIMAL = """\
site: {id: s1, timezone: Asia/Shanghai}
buildings:
  - id: B1
    domains: [{id: B1-power, kind: power}]
lines:
  - {id: l1, transport: tcp, host: 127.0.0.1, port: 5020}
devices:
  - id: m1
    building: B1
    domain: B1-power
    line: l1
    unit: 1
    profile: sdm630
"""


def test_example_site_is_valid() -> None:
    site = load_site(EXAMPLE)
    assert site.config.site.timezone == "Asia/Shanghai"
    assert {b.id for b in site.config.buildings} == {"B1", "B2", "B3"}


def test_minimal_site_loads(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL))
    assert site.device("m1").poll_interval == 1.0


def test_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("    unit: 1\n", "    unit: 300\n"))
    with pytest.raises(ConfigError) as info:
        load_site(path)
    (issue,) = info.value.issues
    text = str(issue)
    assert text.startswith(f"{path}:12: devices[0].unit: ")
    assert "247" in text and "300" in text


def test_unknown_field_and_reference_both_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace("    profile: sdm630\n", "    profile: sdm999\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_site(write(tmp_path, text))
    messages = [str(i) for i in info.value.issues]
    assert any(":14: devices[0].colour: unknown field" in m for m in messages), messages


def test_cross_reference_errors_name_the_line(tmp_path: Path) -> None:
    text = MINIMAL.replace("    line: l1\n", "    line: l9\n")
    with pytest.raises(ConfigError) as info:
        load_site(write(tmp_path, text))
    (issue,) = info.value.issues
    assert ":11: devices[0].line: unknown line 'l9'" in str(issue)


def test_env_substitution_and_missing_variable(tmp_path: Path) -> None:
    text = MINIMAL + "mqtt:\n  host: ${BROKER_HOST}\n  password: ${MQTT_PASSWORD}\n"
    site = load_site(write(tmp_path, text), env={"BROKER_HOST": "broker.local", "MQTT_PASSWORD": "s3cret"})
    assert site.config.mqtt is not None
    assert site.config.mqtt.host == "broker.local"
    assert "s3cret" not in repr(site.config)  # secrets never printed
    with pytest.raises(ConfigError) as info:
        load_site(write(tmp_path, text), env={"BROKER_HOST": "x"})
    assert "environment variable MQTT_PASSWORD is not set" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "devices: [\n")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert str(info.value.issues[0]).startswith(f"{path}:")


def test_bad_timezone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_site(write(tmp_path, MINIMAL.replace("Asia/Shanghai", "Mars/Olympus")))
    assert "site.timezone" in str(info.value) and "IANA" in str(info.value)
