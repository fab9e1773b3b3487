"""The fleet view's memory and catch-up (issue 13, item 3): `meterwatch fleet` started against a local
mosquitto that retains the state of N simulated sites (each one gateway's state, a KPI snapshot and 0-3 open
incidents, version-1 payloads as docs/fleet-topics.md gives them). Measured: the view process's RSS once it
shows all of it, against the same view on an empty broker in the same run, and the time from the view's start
until /api/fleet shows every site, incident and KPI snapshot.

    .venv/bin/python -m bench.fleet_view [--sites 500]

Also the simulated fleet and a view process that the tests (tests/gateway/fleetview/) use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.fleet_bridge import free_port, start_broker

REPO = Path(__file__).resolve().parent.parent
KINDS = (
    ("power_outage", "critical"),
    ("water_supply", "critical"),
    ("comm_fault", "minor"),
    ("pump_fault", "major"),
)

# --------------------------------------------------------------------------------- version-1 payloads


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def gateway_msg(
    company: str, site: str, gateway: str, state: str, at: float, heartbeat: float = 30.0, devices: int = 12
) -> tuple[str, bytes]:
    body = {
        "v": 1, "type": "gateway", "site": site, "gateway": gateway, "state": state, "at": at,
        "started_at": at - 3600, "version": "0.1.0", "buildings": ["B1", "B2"], "devices_up": devices,
        "devices_total": devices, "open_incidents": 0, "keepalive": 30, "heartbeat": heartbeat,
    }  # fmt: skip
    return f"meterwatch/{company}/{site}/gateway/{gateway}", dumps(body)


def incident_msg(
    company: str,
    site: str,
    gateway: str,
    incident_id: int,
    kind: str,
    severity: str,
    buildings: list[str],
    opened_at: float,
    dispatched_at: float | None = None,
    acknowledged_at: float | None = None,
    on_site_at: float | None = None,
    households: int = 40,
    transition: str = "opened",
) -> tuple[str, bytes]:
    body = {
        "id": f"{site}/{gateway}/1795996800-{incident_id}", "v": 1, "type": "incident", "site": site,
        "gateway": gateway, "transition": transition, "at": opened_at,
        "incident": {
            "id": incident_id, "title": f"{kind} ({buildings[0]})", "kind": kind, "severity": severity,
            "event_code": "003", "scope": f"domain:{buildings[0]}-power", "state": "firing",
            "buildings": buildings, "devices": [f"{b}-main" for b in buildings], "households": households,
            "opened_at": opened_at, "first_evidence_at": opened_at - 2, "dispatched_at": dispatched_at,
            "acknowledged_at": acknowledged_at, "on_site_at": on_site_at,
            "escalation_step": None if dispatched_at is None else 0, "resolved_at": None, "merged_into": None,
            "drill": False, "manual": False,
        },
    }  # fmt: skip
    return f"meterwatch/{company}/{site}/incident/{gateway}/{incident_id}", dumps(body)


def kpi_msg(
    company: str, site: str, gateway: str, at: float, figures: dict[str, tuple[int, int]]
) -> tuple[str, bytes]:
    targets = {"informed": 0.9, "response": 0.9, "satisfaction": 0.85}
    kpis = {}
    for name, target in targets.items():
        met, total = figures.get(name, (0, 0))
        value = met / total if total else None
        kpis[name] = {"met": met, "total": total, "value": value, "target": target,
                      "ok": None if value is None else value >= target}  # fmt: skip
    body = {
        "v": 1, "type": "kpi", "id": f"{site}/{gateway}/kpi/{int(at)}", "site": site, "gateway": gateway,
        "at": at, "month": time.strftime("%Y-%m", time.gmtime(at)), "from": at - 86400 * 10, "to": at,
        "timezone": "Asia/Shanghai", "kpis": kpis, "incidents": sum(t for _, t in figures.values()),
        "drills": 0, "response_target_s": 1800.0, "inform_within_s": 900.0,
    }  # fmt: skip
    return f"meterwatch/{company}/{site}/kpi/{gateway}", dumps(body)


@dataclass
class Fleet:
    messages: list[tuple[str, bytes]]
    sites: int
    incidents: int


def simulated_fleet(n_sites: int, now: float, company: str = "acme", seed: int = 13) -> Fleet:
    """n sites, each one gateway online, a KPI snapshot and 0-3 open incidents (some past target)."""
    rnd = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    incidents = 0
    for s in range(n_sites):
        site, gw = f"site-{s:04d}", f"gw-{s:04d}"
        messages.append(gateway_msg(company, site, gw, "online", now - rnd.uniform(0, 20)))
        figures = {}
        for name in ("informed", "response", "satisfaction"):
            total = rnd.randint(0, 12)
            figures[name] = (rnd.randint(total * 2 // 3, total), total)
        messages.append(kpi_msg(company, site, gw, now - 600, figures))
        for i in range(rnd.randint(0, 3)):
            kind, severity = KINDS[rnd.randrange(len(KINDS))]
            opened = now - rnd.uniform(60, 3600)
            acked = opened + 300 if rnd.random() < 0.4 else None
            messages.append(
                incident_msg(
                    company, site, gw, i + 1, kind, severity, [f"B{i + 1}"], opened, opened + 5, acked
                )
            )
            incidents += 1
    return Fleet(messages, n_sites, incidents)


def publish_retained(host: str, port: int, messages: list[tuple[str, bytes]], timeout: float = 60.0) -> None:
    """Every message retained at QoS 1, returned once the broker acknowledged all of them."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-seed-{os.getpid()}-{time.monotonic_ns()}",
                    protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
    client.max_inflight_messages_set(100)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise RuntimeError("the broker did not acknowledge every retained message in time")
    finally:
        client.disconnect()
        client.loop_stop()


# ----------------------------------------------------------------------------------------- the view


class ViewProcess:
    """`meterwatch fleet` as a child process on a free port; `api()` reads its /api/fleet."""

    def __init__(
        self,
        broker_port: int,
        *args: str,
        host: str = "127.0.0.1",
        scheme: str = "mqtt",
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "fleet", "--broker", f"{scheme}://{host}:{broker_port}",
             "--http", f"127.0.0.1:{self.port}", *args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=timeout) as resp:
            return bytes(resp.read())

    def api(self) -> dict[str, Any] | None:
        """/api/fleet, or None while the view does not answer yet."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the fleet view exited with {self.proc.returncode}: {self.output()}")
        try:
            return dict(json.loads(self.get("api/fleet")))
        except OSError:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log is not None else ""

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(view: ViewProcess, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = view.api()
        if state is not None and predicate(state):
            return state
        time.sleep(0.05)
    raise SystemExit(f"the fleet view did not show {what} within {timeout}s")


def has_all(fleet: Fleet) -> Any:
    def check(s: dict[str, Any]) -> bool:
        t = s["totals"]
        kpis = sum(1 for site in s["sites"] if site["kpis"])
        return bool(t["sites"] == fleet.sites and t["incidents"] == fleet.incidents and kpis == fleet.sites)

    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=40.0)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-fleet-view-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            # baseline: the same view with nothing retained
            empty = ViewProcess(port)
            try:
                wait_for(empty, lambda s: s["broker"]["subscribed"], args.timeout, "a subscription")
                base_kib = empty.rss_kib()
            finally:
                empty.stop()
            fleet = simulated_fleet(args.sites, time.time())
            t0 = time.monotonic()
            publish_retained("127.0.0.1", port, fleet.messages)
            seeded_s = time.monotonic() - t0
            view = ViewProcess(port)
            try:
                state = wait_for(view, has_all(fleet), args.timeout, f"all {args.sites} sites")
                caught_up = time.monotonic() - view.started
                rss_kib = view.rss_kib()
                page = view.get("")
                api = view.get("api/fleet")
                rss_served_kib = view.rss_kib()
            finally:
                view.stop()
        finally:
            broker.terminate()
            broker.wait(10)
    out = {
        "bench": "fleet_view",
        "sites": args.sites,
        "messages": len(fleet.messages),
        "incidents": fleet.incidents,
        "late": state["totals"]["incidents_late"],
        "caught_up_s": round(caught_up, 2),
        "seed_publish_s": round(seeded_s, 2),
        "rss_mib": round(rss_kib / 1024, 1),
        "rss_empty_mib": round(base_kib / 1024, 1),
        "rss_per_site_kib": round((rss_kib - base_kib) / args.sites, 1),
        "rss_after_page_mib": round(rss_served_kib / 1024, 1),
        "page_kib": round(len(page) / 1024, 1),
        "api_kib": round(len(api) / 1024, 1),
        "load": round(load, 1),
    }
    print(
        f"fleet view, {args.sites} sites ({out['messages']} retained messages, {out['incidents']} open "
        f"incidents): all shown {out['caught_up_s']} s after the view started (process start included); "
        f"RSS {out['rss_mib']} MiB vs {out['rss_empty_mib']} MiB empty ({out['rss_per_site_kib']} KiB per "
        f"site; {out['rss_after_page_mib']} MiB once the page and /api/fleet were served); "
        f"page {out['page_kib']} KiB, /api/fleet {out['api_kib']} KiB; load {out['load']}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
