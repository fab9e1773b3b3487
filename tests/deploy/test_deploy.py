"""deploy/: Prometheus config and alert rules through the real promtool (check and rule unit tests), the
compose file and the files it mounts, the Dockerfile's sources, the compose site file, the mosquitto config
through a real mosquitto, and the systemd unit through systemd-analyze.

Docker itself does not run here (no daemon, no compose plugin): the compose stack is checked as data only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_site
from tests.gateway.tools.test_dashboards import exposed, full_site, metric_names  # noqa: F401  (fixtures)
from tests.helpers import REPO, free_port

ROOT = REPO
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"


def tool(name: str, *candidates: str) -> str:
    for c in (*candidates, name):
        found = shutil.which(c)
        if found:
            return found
    pytest.fail(f"{name} is not installed ({', '.join(candidates) or name})")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=120)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


# ---------------------------------------------------------------------------------------------------------
# Prometheus


def test_promtool_check_config() -> None:
    res = run(tool("promtool", "/usr/bin/promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout


def test_promtool_check_rules() -> None:
    res = run(tool("promtool", "/usr/bin/promtool"), "check", "rules", str(PROM / "alerts.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = run(tool("promtool", "/usr/bin/promtool"), "test", "rules", str(PROM / "alerts_test.yml"))
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_rule_tests_fail_when_an_alert_is_wrong(tmp_path: Path) -> None:
    """The rule tests can fail: loosen one threshold and they do."""
    rules = (PROM / "alerts.yml").read_text()
    loosened = rules.replace("(meterwatch_device_up) > 0.25", "(meterwatch_device_up) > 0.1")
    assert loosened != rules
    (tmp_path / "alerts.yml").write_text(loosened)
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    res = run(tool("promtool", "/usr/bin/promtool"), "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert res.returncode != 0 and "MeterwatchManyDevicesDown" in res.stdout + res.stderr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_every_alert_is_unit_tested_and_names_exposed_metrics(exposed: set[str]) -> None:  # noqa: F811
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    firing_tested = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")
    }
    names = {r["alert"] for r in alert_rules()}
    assert {"MeterwatchDown", "MeterwatchSpoolGrowing", "MeterwatchManyDevicesDown"} <= names
    assert names == firing_tested, f"alerts without a firing test: {names - firing_tested}"
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exposed
        assert not unknown, f"{rule['alert']}: {rule['expr']!r} names {unknown}, not exposed by the gateway"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_scrape_target_is_the_gateway_of_the_compose_stack() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "meterwatch"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose()["services"]
    site = load_site(DEPLOY / "examples/compound-docker.yaml", env={"INFLUX_TOKEN": "t"})
    assert int(port) == site.config.http.port and site.config.http.host == "0.0.0.0"


# ---------------------------------------------------------------------------------------------------------
# docker-compose, Dockerfile, the compose site


def test_compose_has_the_stack_and_every_mounted_file_exists() -> None:
    c = compose()
    services = c["services"]
    assert {"mosquitto", "influxdb", "meterwatch", "prometheus", "grafana"} <= set(services)
    declared = set(c.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.split(":", 1)[1] in services
    build = services["meterwatch"]["build"]
    context = DEPLOY / build["context"]
    assert (context / build["dockerfile"]).is_file()
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["influxdb"]["image"].startswith("influxdb:2")
    # The token the gateway writes with is the one InfluxDB is set up with and Grafana reads with.
    token = services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert services["meterwatch"]["environment"]["INFLUX_TOKEN"] == token
    assert services["grafana"]["environment"]["INFLUX_TOKEN"] == token


def test_compose_has_no_well_known_credentials_and_publishes_nothing_beyond_this_host() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    for name in ("INFLUX_TOKEN", "INFLUX_PASSWORD", "GRAFANA_PASSWORD"):
        refs = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert refs, name
        # ${X:?message}: compose refuses to start without it; ${X:-default} would be a shared password
        assert all(r.startswith(":?") for r in refs), f"{name} falls back to a default: {refs}"
    for svc_name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{svc_name} publishes {port} on every interface"


def test_the_gateway_container_keeps_its_host_name_so_its_mqtt_session_survives() -> None:
    assert compose()["services"]["meterwatch"].get("hostname"), "a recreated container would get a new id"


def test_the_simulator_service_runs_without_the_influx_token(tmp_path: Path) -> None:
    """The compose simulator has no INFLUX_TOKEN: `simulate` must not need what it never uses."""
    env = {k: v for k, v in os.environ.items() if k != "INFLUX_TOKEN"}
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "simulate", str(DEPLOY / "examples/compound-docker.yaml"),
         "--duration", "1", "--no-mqtt"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "INFLUX_TOKEN" not in r.stderr


def test_dockerfile_installs_the_pinned_versions() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "constraints.txt" in text and re.search(r"pip install .*-c constraints\.txt", text)


def test_grafana_datasources_point_at_compose_services() -> None:
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/meterwatch.yaml").read_text())
    services = compose()["services"]
    for ds in sources["datasources"]:
        m = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"])
        assert m and m.group(1) in services, ds["url"]
    influx = next(d for d in sources["datasources"] if d["type"] == "influxdb")
    env = services["influxdb"]["environment"]
    assert influx["jsonData"]["organization"] == env["DOCKER_INFLUXDB_INIT_ORG"]
    assert influx["jsonData"]["defaultBucket"] == env["DOCKER_INFLUXDB_INIT_BUCKET"]


def test_dockerfile_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "EXPOSE 9464" in text and "USER meterwatch" in text
    # The build context is the repository root: the ignore file lets through exactly what is copied.
    allowed = [
        ln[1:] for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if ln.startswith("!")
    ]
    for src in (s for line in copies for s in line.split()):
        assert src in allowed or f"{src}/**" in allowed, (
            f"{src} is excluded by deploy/Dockerfile.dockerignore"
        )


def test_compose_site_is_the_example_compound_with_stack_endpoints() -> None:
    docker = load_site(DEPLOY / "examples/compound-docker.yaml", env={"INFLUX_TOKEN": "t"})
    example = load_site(DEPLOY / "examples/compound.yaml")

    def devices(site: Any) -> list[tuple[object, ...]]:
        return [
            (d.id, d.building, d.domain, d.role, d.source, d.line, d.unit, d.profile, d.poll_interval)
            for d in site.config.devices
        ]

    assert devices(docker) == devices(example), (
        "deploy/examples/compound-docker.yaml must hold the devices of deploy/examples/compound.yaml: "
        "copy the change over (only lines, mqtt, influx, spool and http differ)"
    )
    assert [b.model_dump() for b in docker.config.buildings] == [
        b.model_dump() for b in example.config.buildings
    ]
    assert [ln.id for ln in docker.config.lines] == [ln.id for ln in example.config.lines]
    assert all(ln.transport != "rtu" for ln in docker.config.lines)  # containers share no pty
    assert docker.config.influx is not None and docker.config.influx.url == "http://influxdb:8086"
    assert docker.config.mqtt is not None and docker.config.mqtt.host == "mosquitto"
    assert docker.config.spool.mode == "durable"


# ---------------------------------------------------------------------------------------------------------
# mosquitto.conf through a real mosquitto


def test_mosquitto_conf_runs_in_a_real_mosquitto(tmp_path: Path) -> None:
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion

    port = free_port()
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    # Only what differs outside the container: the port, the data dir, and (as root) the user.
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    conf = conf.replace("persistence_location /mosquitto/data/", f"persistence_location {tmp_path}/")
    assert f"listener {port}" in conf and str(tmp_path) in conf
    (tmp_path / "m.conf").write_text(conf + "user root\n")
    proc = subprocess.Popen(
        [tool("mosquitto", "/usr/sbin/mosquitto"), "-c", str(tmp_path / "m.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"mosquitto refused deploy/mosquitto/mosquitto.conf:\n{out}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mosquitto did not listen")
                time.sleep(0.05)
        client = Client(CallbackAPIVersion.VERSION2, client_id="deploy-test")
        assert client.connect("127.0.0.1", port) == 0  # anonymous, as the compose stack's gateway does
        client.disconnect()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------------
# systemd


UNIT = DEPLOY / "systemd/meterwatch.service"


def unit_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_systemd_unit_is_hardened_notify_with_a_watchdog() -> None:
    k = unit_keys()
    assert k["Type"] == ["notify"] and k["NotifyAccess"] == ["main"]
    assert k["WatchdogSec"] and k["Restart"] == ["on-failure"]
    assert k["DynamicUser"] == ["yes"] or "User" in k
    for key, want in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "meterwatch",
        "CapabilityBoundingSet": "",
    }.items():
        assert k.get(key) == [want], key
    assert k["ExecStart"][0].endswith("meterwatch run /etc/meterwatch/site.yaml --state-dir %S/meterwatch")


def test_systemd_unit_allows_pi_uarts_and_points_at_installed_docs() -> None:
    unit = (DEPLOY / "systemd/meterwatch.service").read_text()
    assert "DeviceAllow=char-ttyAMA rw" in unit
    doc = re.search(r"^Documentation=(\S+)$", unit, flags=re.M)
    assert doc is not None and doc.group(1) == "file:/usr/share/doc/meterwatch/README.md"
    # the install steps put the README where the unit says
    assert "/usr/share/doc/meterwatch/README.md" in (DEPLOY / "README.md").read_text()


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "/usr/bin/systemd-analyze")
    meterwatch = ROOT / ".venv/bin/meterwatch"
    assert meterwatch.exists()
    unit = tmp_path / "meterwatch.service"
    # verify checks that ExecStart's binary exists: point it at this checkout's install.
    unit.write_text(UNIT.read_text().replace("/opt/meterwatch/bin/meterwatch", str(meterwatch)))
    res = run(analyze, "verify", str(unit))
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr
    res = run(analyze, "security", "--offline=yes", "--no-pager", str(unit))
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.5, res.stdout


def test_systemd_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The verify check above can fail: an unknown key or a bad value is reported."""
    unit = tmp_path / "meterwatch.service"
    text = UNIT.read_text().replace("/opt/meterwatch/bin/meterwatch", str(ROOT / ".venv/bin/meterwatch"))
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    res = run(tool("systemd-analyze", "/usr/bin/systemd-analyze"), "verify", str(unit))
    assert "sometimes" in res.stdout + res.stderr
