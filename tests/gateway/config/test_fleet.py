"""The `fleet:` section: defaults, the broker URL, credentials from ${ENV} never printed, and bad values
named by file:line with what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_site
from gateway.config.fleet import default_gateway_id, parse_broker

BASE = """\
site: {{id: s1, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, domains: [{{id: B1-power, kind: power}}]}}
fleet:
{fleet}
"""
SECRET = "fleet-pw-5e2b9c41"


def write(tmp_path: Path, fleet: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(BASE.format(fleet=fleet), encoding="utf-8")
    return p


def errors(tmp_path: Path, fleet: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_site(write(tmp_path, fleet))
    return str(info.value)


def test_defaults(tmp_path: Path) -> None:
    cfg = load_site(write(tmp_path, "  company: acme-pm\n  broker: mqtts://broker.example.com")).config.fleet
    assert cfg is not None
    assert (cfg.address.host, cfg.address.port, cfg.address.tls) == ("broker.example.com", 8883, True)
    assert cfg.keepalive == 30 and cfg.heartbeat == 30.0 and cfg.buffer == 100_000 and cfg.kpi_at == "06:00"
    assert cfg.gateway_id == default_gateway_id() and cfg.tls is None and cfg.username is None


def test_absent_means_off(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(BASE.split("fleet:")[0].format(), encoding="utf-8")
    assert load_site(p).config.fleet is None


def test_broker_urls() -> None:
    assert parse_broker("mqtt://10.0.0.5") == parse_broker("mqtt://10.0.0.5:1883")
    assert parse_broker("mqtts://h:9000").port == 9000
    for bad, says in [
        ("tcp://h", "expected mqtt://host[:port] or mqtts://host[:port]"),
        ("mqtt://u:p@h", "credentials in username and password"),
        ("mqtt://h/x", "no path"),
        ("mqtt://h:70000", "bad port"),
        ("mqtt://", "names no host"),
    ]:
        with pytest.raises(ValueError, match=None) as info:
            parse_broker(bad)
        assert says in str(info.value), (bad, str(info.value))


def test_gateway_id_from_host_name() -> None:
    assert default_gateway_id("GW_North.example.com") == "gw-north"
    assert default_gateway_id("___") == "gateway"


def test_bad_values_named_by_line(tmp_path: Path) -> None:
    out = errors(
        tmp_path,
        "  company: Acme_PM\n  broker: http://h\n  gateway: 'a/b'\n  keepalive: 2\n  kpi_at: '6am'\n"
        "  buffer: 10\n  heartbeat: 0s",
    )
    assert "site.yaml:5: fleet.company: expected lower-case letters, digits and dashes" in out
    assert "site.yaml:6: fleet.broker: expected mqtt://host[:port] or mqtts://host[:port]" in out
    assert "site.yaml:7: fleet.gateway: expected lower-case letters" in out
    assert "site.yaml:8: fleet.keepalive:" in out
    assert "site.yaml:9: fleet.kpi_at: expected HH:MM (site time)" in out
    assert "site.yaml:10: fleet.buffer:" in out
    assert "site.yaml:11: fleet.heartbeat:" in out


def test_missing_and_unknown_keys(tmp_path: Path) -> None:
    out = errors(tmp_path, "  broker: mqtt://h\n  retain: true")
    assert "fleet.company" in out and "fleet.retain" in out


def test_consistency(tmp_path: Path) -> None:
    out = errors(tmp_path, "  company: a\n  broker: mqtt://h\n  tls: {ca_file: ca.pem}")
    assert "write mqtts:// to connect with TLS" in out
    out = errors(tmp_path, "  company: a\n  broker: mqtts://h\n  tls: {cert_file: c.pem}")
    assert "site.yaml:7: fleet.tls: cert_file and key_file go together" in out
    out = errors(tmp_path, "  company: a\n  broker: mqtt://h\n  password: x1234567")
    assert "password without username" in out


def test_credentials_from_env_are_never_printed(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        "  company: acme\n  broker: mqtt://h\n  username: gw\n  password: ${FLEET_PW}\n  keepalive: 1\n"
        "  gateway: ${FLEET_GW}",
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLEET_PW": SECRET, "FLEET_GW": "GW_" + SECRET},
    )
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "site.yaml:9: fleet.keepalive" in out and SECRET not in out
    assert "site.yaml:10: fleet.gateway: expected lower-case letters" in out  # named, its value masked
    cfg = load_site(write(tmp_path, "  company: acme\n  broker: mqtt://h\n  username: gw\n  password: x"))
    assert cfg.config.fleet is not None and "x" not in repr(cfg.config.fleet.password)
