"""Prometheus + Alertmanager from Debian's packages, as a peer to measure meterwatch's notices against.

`VoltageExporter` serves the simulated meters' voltage in Prometheus' text format, read from the
simulator's World at scrape time. `PromStack` starts /usr/bin/prometheus and
/usr/bin/prometheus-alertmanager on free loopback ports in a scratch directory: Prometheus scrapes the
exporter and evaluates one alert rule, Alertmanager posts the alerts to a webhook URL. Both are stopped
(SIGTERM, then SIGKILL) by `stop()`. The set-up follows ../shared/peers/prometheus-alertmanager/.

    stack = PromStack(tmp, exporter_target="127.0.0.1:PORT", webhook_url="http://127.0.0.1:RX/am")
    stack.start()      # raises PeerMissing when a binary is not installed
    ...
    stack.stop()
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from gateway.tools.receiver import HttpThread
from simulators.ports import free_port

PROMETHEUS = ("prometheus",)
# Debian names the binary prometheus-alertmanager; upstream tarballs call it alertmanager
ALERTMANAGER = ("prometheus-alertmanager", "alertmanager")
PACKAGES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}


class PeerMissing(RuntimeError):
    """A binary of the peer is not installed (the message names the Debian package)."""


def find_binary(names: Sequence[str]) -> str | None:
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
        if path:
            return path
    return None


def missing() -> list[str]:
    """The Debian packages of the peer that are not installed."""
    out = []
    if find_binary(PROMETHEUS) is None:
        out.append(PACKAGES["prometheus"])
    if find_binary(ALERTMANAGER) is None:
        out.append(PACKAGES["alertmanager"])
    return out


class VoltageExporter(HttpThread):
    """GET /metrics: `meter_voltage_volts{meter="<device>",phase="l1"} <V>` for each meter, read through
    `read(device)` when Prometheus scrapes (so it sees a cut at the first scrape after it)."""

    def __init__(self, meters: Sequence[str], read: Callable[[str], float]) -> None:
        super().__init__(name="voltage-exporter")
        self.meters = list(meters)
        self.read = read
        self.scrapes = 0

    def text(self) -> str:
        lines = [
            "# HELP meter_voltage_volts Phase voltage of a simulated meter.",
            "# TYPE meter_voltage_volts gauge",
        ]
        for m in self.meters:
            lines.append(f'meter_voltage_volts{{meter="{m}",phase="l1"}} {self.read(m)}')
        return "\n".join(lines) + "\n"

    def start(self) -> VoltageExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.text().encode()
                exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.serve(Handler)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class PromStack:
    """Prometheus (scrape and evaluation every `interval`, rule `meter_voltage_volts < 22` held `for`)
    and Alertmanager (group_by ['...']: each alert its own group; `group_wait`; webhook receiver)."""

    def __init__(
        self,
        directory: Path,
        exporter_target: str,
        webhook_url: str,
        *,
        interval: str = "15s",
        for_: str = "10s",
        group_wait: str = "30s",
        threshold: float = 22.0,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.exporter_target = exporter_target
        self.webhook_url = webhook_url
        self.interval = interval
        self.for_ = for_
        self.group_wait = group_wait
        self.threshold = threshold
        self.prom_port = free_port()
        self.am_port = free_port()
        self.prom: subprocess.Popen[bytes] | None = None
        self.am: subprocess.Popen[bytes] | None = None

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    @property
    def am_url(self) -> str:
        return f"http://127.0.0.1:{self.am_port}"

    def write_configs(self) -> tuple[Path, Path]:
        """prometheus.yml (+ rules.yml) and alertmanager.yml; JSON is YAML, so no YAML writer is needed."""
        rules = {
            "groups": [
                {
                    "name": "power",
                    "rules": [
                        {
                            "alert": "PowerOutage",
                            "expr": f"meter_voltage_volts < {self.threshold}",
                            "for": self.for_,
                        }
                    ],
                }
            ]
        }
        rules_path = self.dir / "rules.yml"
        rules_path.write_text(json.dumps(rules, indent=1), encoding="utf-8")
        prom = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(rules_path)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "meters", "static_configs": [{"targets": [self.exporter_target]}]}
            ],
        }
        prom_path = self.dir / "prometheus.yml"
        prom_path.write_text(json.dumps(prom, indent=1), encoding="utf-8")
        am = {
            "route": {"receiver": "hook", "group_by": ["..."], "group_wait": self.group_wait},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": self.webhook_url}]}],
        }
        am_path = self.dir / "alertmanager.yml"
        am_path.write_text(json.dumps(am, indent=1), encoding="utf-8")
        return prom_path, am_path

    def start(self, timeout: float = 60.0) -> PromStack:
        gone = missing()
        if gone:
            raise PeerMissing(f"not installed: {', '.join(gone)} (apt-get install {' '.join(gone)})")
        prom_bin = find_binary(PROMETHEUS)
        am_bin = find_binary(ALERTMANAGER)
        assert prom_bin is not None and am_bin is not None
        prom_cfg, am_cfg = self.write_configs()
        try:
            with (self.dir / "alertmanager.log").open("ab") as log:
                self.am = subprocess.Popen(
                    [
                        am_bin,
                        f"--config.file={am_cfg}",
                        f"--storage.path={self.dir / 'am-data'}",
                        f"--web.listen-address=127.0.0.1:{self.am_port}",
                        "--cluster.listen-address=",  # no HA gossip: a lone Alertmanager sends at once
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            with (self.dir / "prometheus.log").open("ab") as log:
                self.prom = subprocess.Popen(
                    [
                        prom_bin,
                        f"--config.file={prom_cfg}",
                        f"--storage.tsdb.path={self.dir / 'prom-data'}",
                        f"--web.listen-address=127.0.0.1:{self.prom_port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._wait(lambda: _http_ok(self.am_url + "/-/ready"), timeout, "alertmanager ready", self.am)
            self._wait(lambda: _http_ok(self.prom_url + "/-/ready"), timeout, "prometheus ready", self.prom)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(
        self, ok: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what}: the process exited ({proc.returncode}); logs in {self.dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; logs in {self.dir}")
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prom_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scraped(self) -> bool:
        """Whether Prometheus has scraped the exporter successfully at least once."""
        try:
            return any(r["value"][1] == "1" for r in self.query('up{job="meters"}'))
        except (OSError, KeyError, ValueError):
            return False

    def wait_scraped(self, timeout: float = 60.0) -> None:
        self._wait(self.scraped, timeout, "the first scrape of the exporter", self.prom)

    def stop(self) -> None:
        _stop(self.prom)
        _stop(self.am)
        self.prom = self.am = None

    def versions(self) -> dict[str, str]:
        """`prometheus --version` and `prometheus-alertmanager --version`, first line each."""
        out: dict[str, str] = {}
        for key, names in (("prometheus", PROMETHEUS), ("alertmanager", ALERTMANAGER)):
            binary = find_binary(names)
            if binary is None:
                continue
            r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            text = (r.stdout or r.stderr).strip().splitlines()
            out[key] = text[0] if text else "?"
        return out
