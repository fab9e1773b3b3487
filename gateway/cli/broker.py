"""The MQTT broker as the CLI sees it: a local one for the demo (Debian's mosquitto when installed, else an
embedded amqtt broker), and the one line `run` and `simulate` print when the site's broker cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.config import Site

log = logging.getLogger("meterwatch.broker")
REACH_TIMEOUT = 1.0


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def unreachable(host: str, port: int, timeout: float = REACH_TIMEOUT) -> str | None:
    """Why nothing takes a TCP connection at host:port ("connection refused"), or None when something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:  # refused, unreachable, unknown host (gaierror), timed out
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def broker_problem(site: Site) -> tuple[str, str, list[str]] | None:
    """(host:port, why, MQTT device ids) when the site has MQTT devices and its broker does not answer."""
    cfg = site.config.mqtt
    devices = [d.id for d in site.config.devices if d.source == "mqtt"]
    if cfg is None or not devices:
        return None
    why = unreachable(cfg.host, cfg.port)
    return None if why is None else (f"{cfg.host}:{cfg.port}", why, devices)


def warn_if_no_broker(site: Site) -> bool:
    """`run` at start: one warning line when the broker cannot be reached (collection goes on without it)."""
    problem = broker_problem(site)
    if problem is None:
        return False
    where, why, devices = problem
    log.warning(
        "no MQTT broker at %s (%s): the MQTT devices %s get no readings until it answers; Modbus collection "
        "goes on and the gateway keeps trying to connect (start the broker, or correct mqtt.host/port in %s)",
        where,
        why,
        ", ".join(devices),
        site.path.name,
    )
    return True


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@contextlib.asynccontextmanager
async def local_broker(host: str, port: int) -> AsyncIterator[str]:
    """Yields a description of the broker serving host:port (an existing one is reused as it is)."""
    if port_open(host, port):
        yield f"existing broker at {host}:{port}"
        return
    binary = find_mosquitto()
    if binary:
        with tempfile.TemporaryDirectory(prefix="meterwatch-broker-") as tmp:
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(
                f"listener {port} {host}\nallow_anonymous true\npersistence true\n"
                f"persistence_location {tmp}/\n"
            )
            proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                await _wait_port(host, port, proc)
                yield f"mosquitto ({binary}) at {host}:{port}"
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise RuntimeError(
            "no MQTT broker: mosquitto is not installed and neither is the demo extra "
            "(apt-get install mosquitto, or pip install 'meterwatch[demo]')"
        ) from None

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield f"embedded amqtt broker at {host}:{port} (no mosquitto installed)"
    finally:
        await broker.shutdown()


async def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode} (is port {port} in use?)")
        if port_open(host, port):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"mosquitto did not open {host}:{port} within 5 s")
