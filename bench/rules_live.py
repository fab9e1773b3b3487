"""Detection latency, live and end to end: the simulator cuts a building's power; how long until the incident
is visible in GET /api/incidents? The real daemon (pollers, bus, engine, store, HTTP) polls simulated meters
over Modbus TCP on localhost.

Site: poll 0.5 s, power outage `for` 2 s, `clear_for` 3 s. The floor is therefore `for` (2 s) plus up to one
poll interval; the rest is the gateway's own delay. Each run cuts B1, waits for the incident, restores B1 and
waits for it to resolve. `measure(runs)` returns median and p95; `main()` prints a human line and a JSON
line. The helpers here (write_live_site, DaemonThread, LiveSite) also serve
tests/gateway/app/test_detect_live.py.

    .venv/bin/python -m bench.rules_live [RUNS]
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.waiting import wait_for
from gateway.app.daemon import Runtime, build_runtime, serve
from gateway.app.services import Services
from gateway.config import Site, load_site
from gateway.core.loopthread import LoopThread
from gateway.incidents.manager import IncidentManager
from rules.model import IncidentState
from simulators.ports import free_port
from simulators.runner import SimulatorThread

POLL = 0.5
FOR = 2.0
CLEAR_FOR = 3.0


def write_live_site(
    directory: Path,
    port: int | None = None,
    *,
    poll: float = POLL,
    for_: float = FOR,
    clear_for: float = CLEAR_FOR,
    heartbeat: float = 1.0,
    http_port: int = 0,
    http_tokens: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """Two buildings on one Modbus TCP line (its converter is not powered by either building). `http_tokens`
    (token name -> the environment variable holding it) become the site's http.tokens.

    B1-main and B2-main are main meters with their own auxiliary supply: a cut makes them read 0 V on every
    phase. B1-unit is powered by the circuit it measures: a cut silences it (a symptom of B1's outage).
    """
    port = port or free_port()
    tokens = ""
    if http_tokens:
        listed = ", ".join(f"{{name: {n}, token: '${{{env}}}'}}" for n, env in http_tokens.items())
        tokens = f", tokens: [{listed}]"
    text = f"""\
site: {{id: livetest, name: Live detection test site, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 40, domains: [{{id: B1-power, kind: power}}]}}
  - {{id: B2, households: 30, domains: [{{id: B2-power, kind: power}}]}}
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {port}, timeout: 300ms}}
devices:
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, line: tcp, unit: 1,
     profile: sdm630, poll_interval: {poll}s}}
  - {{id: B1-unit, building: B1, domain: B1-power, role: unit_power, households: 1, line: tcp, unit: 2,
     profile: sdm120, poll_interval: {poll}s, line_powered: true}}
  - {{id: B2-main, building: B2, domain: B2-power, role: main_power, households: 30, line: tcp, unit: 3,
     profile: dtsu666, poll_interval: {poll}s}}
rules:
  - {{id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     audiences: [staff, residents], match: {{roles: [main_power, unit_power]}}, for: {for_}s,
     clear_for: {clear_for}s}}
  - {{id: comm.absent, kind: absence, category: comm_fault, severity: minor, for: {for_}s,
     clear_for: {clear_for}s}}
http: {{host: 127.0.0.1, port: {http_port}{tokens}}}
incidents: {{heartbeat: {heartbeat}s}}
"""
    path = directory / "site.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class DaemonThread(LoopThread):
    """The daemon (build_runtime + serve) on its own event loop in a thread, for tests and benches."""

    thread_name = "meterwatch-daemon"

    def __init__(self, site: Site, state_dir: Path) -> None:
        super().__init__()
        self.site = site
        self.state_dir = state_dir
        self.rt: Runtime | None = None

    def start(self, timeout: float = 30.0) -> DaemonThread:
        super().start(timeout)
        wait_for(lambda: self.services.http_port, timeout, "the daemon's HTTP port")
        return self

    async def setup(self) -> None:
        self.rt = build_runtime(self.site, self.state_dir)

    async def body(self, stop: asyncio.Event) -> None:
        assert self.rt is not None
        await serve(self.rt, stop)

    @property
    def services(self) -> Services:
        assert self.rt is not None
        return self.rt.services

    @property
    def incidents(self) -> IncidentManager:
        mgr = self.services.incidents
        assert mgr is not None
        return mgr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.services.http_port}"

    def api(self, path: str = "/api/incidents?state=all") -> Any:
        return get_json(self.url + path)

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)


def all_polled(daemon: DaemonThread) -> bool:
    devices = daemon.services.device_stats()
    return bool(devices) and all(s.last_success is not None for s in devices.values())


def open_incidents(daemon: DaemonThread) -> list[dict[str, Any]]:
    body = daemon.api("/api/incidents?state=open")
    return list(body["incidents"])


def incident(daemon: DaemonThread, incident_id: int) -> dict[str, Any]:
    return dict(daemon.api(f"/api/incidents/{incident_id}"))


class LiveSite:
    """Simulators plus the daemon for one live site in a directory; use as a context manager."""

    def __init__(self, directory: Path, **site_options: Any) -> None:
        self.directory = directory
        self.site_path = write_live_site(directory, **site_options)
        self.site = load_site(self.site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")

    def __enter__(self) -> LiveSite:
        self.sim.start()
        try:
            self.daemon.start()
            wait_for(lambda: all_polled(self.daemon), 30.0, "every device polled once")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.daemon.stop()
        self.sim.stop()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def one_run(live: LiveSite, timeout: float = 60.0) -> tuple[float, float]:
    """Cut B1, time until its incident is listed open; restore, time until it is resolved."""
    world = live.sim.world
    cut = time.time()
    world.cut_power("B1")
    found = wait_for(
        lambda: [i for i in open_incidents(live.daemon) if i["scope"] == "domain:B1-power"],
        timeout,
        "B1's power incident",
        interval=0.01,
    )
    seen = time.time()
    world.restore_power("B1")
    restored = time.time()
    inc_id = found[0]["id"]
    wait_for(
        lambda: incident(live.daemon, inc_id)["state"] == IncidentState.RESOLVED,
        timeout,
        "resolution",
        interval=0.05,
    )
    return seen - cut, time.time() - restored


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure(runs: int = 20) -> dict[str, Any]:
    """Detection latency (power cut in the simulator -> incident visible in /api/incidents) over `runs`."""
    # every run cuts the power on purpose: the pollers' and the detector's warnings are expected noise here
    logging.getLogger("meterwatch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="mw-rules-live-") as tmp, LiveSite(Path(tmp)) as live:
        detect: list[float] = []
        resolve: list[float] = []
        for _ in range(runs):
            d, r = one_run(live)
            detect.append(d)
            resolve.append(r)
            # a recurrence inside the reopen window would reopen the same incident: that is fine here,
            # the clock starts at each cut either way
    return {
        "runs": runs,
        "poll_interval_s": POLL,
        "for_s": FOR,
        "clear_for_s": CLEAR_FOR,
        "detect_median_s": round(statistics.median(detect), 3),
        "detect_p95_s": round(percentile(detect, 95), 3),
        "detect_max_s": round(max(detect), 3),
        "resolve_median_s": round(statistics.median(resolve), 3),
        "resolve_p95_s": round(percentile(resolve, 95), 3),
        "budget_s": POLL + FOR + 2.0,
    }


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the simulated outages make the pollers warn on every run
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    r = measure(runs)
    print(
        f"live detection over {r['runs']} runs (poll {POLL}s, for {FOR}s, clear_for {CLEAR_FOR}s): "
        f"power cut -> incident in /api/incidents median {r['detect_median_s']}s, p95 {r['detect_p95_s']}s "
        f"(budget {r['budget_s']}s); restore -> resolved median {r['resolve_median_s']}s, "
        f"p95 {r['resolve_p95_s']}s"
    )
    print(json.dumps({"bench": "rules_live", **r}))


if __name__ == "__main__":
    main()
