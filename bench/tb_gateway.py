"""ThingsBoard IoT Gateway 3.8.5 (PyPI), the polling bench's peer: its venv, its config, a platform stand-in.

Facts this follows (../shared/peers/README.md, measured there on this kind of machine):
- `thingsboard-gateway` 3.8.5 pins its own pymodbus (3.9.2), so it lives in its own venv, .bench-venv-tb/,
  made here with `pip install thingsboard-gateway==3.8.5` when missing.
- It publishes nothing until the platform answers the RPC `getSessionLimits` on
  v1/devices/me/rpc/request/<id>; a bare mosquitto never does. PlatformStandIn answers it with "no rate
  limits" (what a tenant without limits gets), so the gateway itself is measured, not throttling.
- The console script does not create ./logs: it is started from a directory that has one, or every
  decode prints a deprecation warning (+19 % CPU).
- Its Modbus connector sends one request per value: the config here has the 9 values of an SDM630 that
  its reference set-up reads (voltages, currents, total power, frequency, import energy), float32 FC04,
  1 s poll, one TCP endpoint per meter.
Everything else is the package's shipped default (its logs.json, memory storage, QoS 1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench-venv-tb"
VERSION = "3.8.5"
# (tag, input register) of the 9 float32 values per meter
TAGS = (
    ("voltageL1", 0),
    ("voltageL2", 2),
    ("voltageL3", 4),
    ("currentL1", 6),
    ("currentL2", 8),
    ("currentL3", 10),
    ("powerTotal", 52),
    ("frequency", 70),
    ("energyImport", 72),
)
VALUES_PER_METER = len(TAGS)


class PeerUnavailable(RuntimeError):
    """The peer could not be installed or started; the message says why."""


def ensure_venv() -> Path:
    """The `thingsboard-gateway` console script of VERSION, installed into VENV when missing."""
    script = VENV / "bin" / "thingsboard-gateway"
    stamp = VENV / f".installed-{VERSION}"
    if script.exists() and stamp.exists():
        return script
    if not (VENV / "bin" / "python").exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if r.returncode != 0:
            raise PeerUnavailable(f"python -m venv {VENV} failed: {r.stderr.strip()[-500:]}")
    cmd = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"thingsboard-gateway=={VERSION}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not script.exists():
        raise PeerUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-800:]}")
    stamp.touch()
    return script


def connector_config(ports: list[int]) -> dict[str, Any]:
    """A Modbus connector with one SDM630-like meter per port (unit 1), 9 float32 values, 1 s poll."""
    slaves = [
        {
            "host": "127.0.0.1",
            "port": port,
            "type": "tcp",
            "method": "socket",
            "timeout": 3,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": True,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "pollPeriod": 1000,
            "unitId": 1,
            "deviceName": f"meter{i:04d}",
            "deviceType": "meter",
            "connectAttemptTimeMs": 3000,
            "connectAttemptCount": 3,
            "waitAfterFailedAttemptsMs": 30000,
            "attributes": [],
            "timeseries": [
                {"tag": tag, "type": "32float", "functionCode": 4, "objectsCount": 2, "address": address}
                for tag, address in TAGS
            ],
            "attributeUpdates": [],
            "rpc": [],
        }
        for i, port in enumerate(ports)
    ]
    return {"master": {"slaves": slaves}, "id": "0d5c6a7e-bench-modbus"}


def gateway_config(mqtt_port: int) -> dict[str, Any]:
    """The package's tb_gateway.json with the platform on loopback and remote configuration off."""
    shipped = VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    cfg: dict[str, Any] = json.loads((shipped / "thingsboard_gateway/config/tb_gateway.json").read_text())
    cfg["thingsboard"].update(
        host="127.0.0.1",
        port=mqtt_port,
        remoteConfiguration=False,
        security={"type": "accessToken", "accessToken": "bench"},
    )
    cfg["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PlatformStandIn:
    """Answers getSessionLimits (no rate limits) and counts the telemetry messages the gateway sends."""

    LIMITS: ClassVar[dict[str, Any]] = {
        "maxPayloadSize": 65536,
        "maxInflightMessages": 100,
        "rateLimits": {},
        "gatewayRateLimits": {},
    }

    def __init__(self, port: int) -> None:
        from paho.mqtt.client import Client, MQTTMessage
        from paho.mqtt.enums import CallbackAPIVersion

        self.answered = threading.Event()
        self.telemetry_messages = 0
        client = Client(CallbackAPIVersion.VERSION2, client_id="bench-platform-stand-in")

        def on_connect(c: Client, *_: Any) -> None:
            c.subscribe([("v1/devices/me/rpc/request/+", 1), ("v1/gateway/telemetry", 0)])

        def on_message(c: Client, _: Any, m: MQTTMessage) -> None:
            if m.topic == "v1/gateway/telemetry":
                self.telemetry_messages += 1
                return
            try:
                req = json.loads(m.payload)
            except ValueError:
                return
            if isinstance(req, dict) and req.get("method") == "getSessionLimits":
                rid = m.topic.rsplit("/", 1)[1]
                c.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(self.LIMITS), qos=1)
                self.answered.set()

        client.on_connect, client.on_message = on_connect, on_message
        client.connect("127.0.0.1", port, 60)
        client.loop_start()
        self.client = client

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class TBGateway:
    """`with TBGateway(ports, work_dir) as tb:` the peer polling `ports`; tb.pid, tb.platform."""

    def __init__(self, ports: list[int], work: Path) -> None:
        self.ports = ports
        self.work = work
        self.broker: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.platform: PlatformStandIn | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> TBGateway:
        script = ensure_venv()
        try:
            self._start(script)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, script: Path) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        mqtt_port = free_port()
        conf = self.work / "mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nuser root\nlog_dest none\n")
        self.broker = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PeerUnavailable(f"mosquitto did not start on port {mqtt_port}") from None
                time.sleep(0.05)
        self.platform = PlatformStandIn(mqtt_port)  # before the gateway: it asks once, at connect
        config_dir = self.work / "config"
        config_dir.mkdir()
        (self.work / "logs").mkdir()
        shipped = script.parents[1] / "lib"
        logs = next(shipped.glob("python3*/site-packages/thingsboard_gateway/config/logs.json"))
        shutil.copy(logs, config_dir / "logs.json")
        (config_dir / "tb_gateway.json").write_text(json.dumps(gateway_config(mqtt_port), indent=1))
        (config_dir / "modbus.json").write_text(json.dumps(connector_config(self.ports)))
        env = {**os.environ, "TB_GW_CONFIG_DIR": str(config_dir)}
        with (self.work / "gateway.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [str(script)], cwd=self.work, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        if not self.platform.answered.wait(60):
            raise PeerUnavailable(
                f"ThingsBoard gateway did not ask for its session limits in 60 s; its output: {self.output()}"
            )

    def output(self) -> str:
        path = self.work / "gateway.out"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in (self.proc, self.broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self.platform is not None:
            self.platform.close()
