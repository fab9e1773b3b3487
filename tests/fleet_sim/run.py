"""The fleet acceptance simulation (issue 13, Acceptance): N real gateway processes (`meterwatch run`, each a
small simulated compound) -> one mosquitto standing in for the broker cluster and one VictoriaMetrics for the
store, `meterwatch fleet` watching, and a counting subscriber of its own (tests/fleet_sim/counter.py).

    .venv/bin/python -m tests.fleet_sim.run --gateways 20 --outages 5 --broker-stop 120 --keepalive 10

What happens, in order (every step waits on a condition with a deadline; only the broker's downtime is a
duration, the scenario's own):
1. every gateway shows online in the fleet view with all its meters up;
2. supply cut in building B1 of M compounds: each shows in the view with its open incident (timed); half
   are acknowledged through the gateway's HTTP API;
3. the broker is stopped (SIGTERM: it saves its sessions) for S seconds, while the other half are
   acknowledged, the first half marked on site, B2 of every outage compound is cut (incidents opened while
   the broker is away), B1 restored in half of them (resolved while it is away) and, in every other
   compound, a fault reported by phone opened, noted and resolved by hand: every gateway keeps these events
   in its outbox;
4. the broker starts again on the same port with its persistence: the outboxes drain, the counting
   subscriber gets its session back, and the view shows exactly the incidents each gateway holds open;
5. all clear (every cut restored): the view shows no incident;
6. one gateway SIGKILLed (and, for the keepalive itself, another frozen with SIGSTOP, its socket left open
   as a cut network leaves it): the time until /api/fleet shows each offline (see BROKER_SCAN_S);
7. checks: the outages showed in the view; exactly once (the events/ ids each gateway committed, read from
   its incident store, equal the ids the subscriber got; duplicate deliveries counted, each id once); offline
   within 1.5 x keepalive; every compound's meters stored in VictoriaMetrics.

It prints one line per check and one JSON line of figures, and exits 1 when a check fails. The committed ids
come from a trigger the run adds to each gateway's store before the gateway first starts (sites.py,
`prepare_store`): the publisher deletes an outbox row once the broker acknowledged it, so the table alone
cannot say afterwards what was owed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.fleet_view import ViewProcess
from simulators.runner import SimulatorThread
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.receiver import Receiver
from tests.fixtures.victoria import Victoria
from tests.fleet_sim.counter import Counter5
from tests.fleet_sim.sites import (
    COMPANY,
    TOKEN,
    TOKEN_ENV,
    Compound,
    Ledger,
    pending,
    read_ledger,
    write_compound,
)

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

POLL_S = 0.1  # how often a waited-for condition (the view's /api/fleet, a gateway's API) is read
# A frozen client (its socket open) is cut by the broker's keepalive check. mosquitto 2.0.x (Debian's 2.0.11
# here; src/keepalive.c) runs that check only when more than 5 whole seconds passed since the last one
# (`last_keepalive_check + 5 < now`), and counts whole seconds (`now - last_msg_in > keepalive*3/2`): its
# last will comes up to 6 + 1 s after 1.5 x keepalive. A SIGKILL needs none of this: the kernel closes the
# socket and mosquitto publishes the will at once, so that check gets no allowance at all.
BROKER_SCAN_S = 6.0
WHOLE_SECONDS_S = 1.0


class SimFailure(Exception):
    """A step's condition did not hold before its deadline: what was waited for."""


@dataclass
class Options:
    gateways: int = 20
    outages: int = 5
    broker_stop: float = 120.0
    keepalive: int = 10
    heartbeat: float | None = None  # default: the keepalive (the view's silence limit, 3 x it, stays behind)
    poll: float = 2.0
    hang: bool = True  # also freeze a gateway with SIGSTOP (the keepalive itself, not the socket's close)
    timeout: float = 120.0  # per waited-for step; a time-out says it never happened, it is no speed claim


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    work: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = POLL_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SimFailure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------- the gateways


class Gateway:
    """`meterwatch run SITE --state-dir DIR`, as a user starts the daemon, in a process of its own."""

    def __init__(self, compound: Compound, log: Path) -> None:
        self.c = compound
        self.log = log
        exe = Path(sys.executable).with_name("meterwatch")
        cmd = [str(exe), "run", str(compound.path), "--state-dir", str(compound.state_dir), "--log-level",
               "warning"]  # fmt: skip
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, TOKEN_ENV: TOKEN}
            )
        self.ready: tuple[float, float] | None = None  # (monotonic time, CPU s) once every gateway is up
        self.cpu_pct: float | None = None  # CPU use from then until the offline step, % of one core
        self.rss_mib: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process used so far, from /proc (cheap)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def mark_ready(self) -> None:
        self.ready = (time.monotonic(), self.cpu_s())

    def sample_usage(self) -> None:
        """CPU use since `mark_ready` (start-up's imports left out) and the resident memory now."""
        if self.ready is None or not self.alive():
            return
        t0, cpu0 = self.ready
        self.cpu_pct = 100 * (self.cpu_s() - cpu0) / max(time.monotonic() - t0, 1e-9)
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = next(ln for ln in status.splitlines() if ln.startswith("VmRSS:"))
        self.rss_mib = int(rss.split()[1]) / 1024

    def api(self, path: str) -> Any:
        req = urllib.request.Request(self.c.api + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.c.api + path,
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def open_incidents(self) -> list[dict[str, Any]] | None:
        try:
            return list(self.api("/api/incidents?state=open")["incidents"])
        except OSError:
            return None  # not serving yet

    def power_incident(self, building: str) -> dict[str, Any] | None:
        found = [i for i in self.open_incidents() or [] if i["scope"] == f"domain:{building}-power"]
        return found[0] if found else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM: the daemon stops cleanly (its state says offline)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def wait_stopped(self, timeout: float = 20.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------------------------------- the view


def view_sites(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["site"]: s for s in state["sites"] if s["company"] == COMPANY}


def view_incidents(site: dict[str, Any] | None) -> set[tuple[str, int]]:
    return {(i["gateway"], int(i["id"])) for i in (site or {}).get("incidents", [])}


def view_gateway(site: dict[str, Any] | None, gateway: str) -> dict[str, Any] | None:
    return next((g for g in (site or {}).get("gateways", []) if g["gateway"] == gateway), None)


# ------------------------------------------------------------------------------------------- the run


class Simulation:
    def __init__(self, opts: Options, work: Path, say: Callable[[str], None] = print) -> None:
        if not 1 <= opts.outages <= opts.gateways:
            raise ValueError(f"--outages {opts.outages}: expected 1 to --gateways ({opts.gateways})")
        if opts.gateways < 2:
            raise ValueError("--gateways: at least 2 (one is killed at the end)")
        self.o = opts
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.result = Result(work=work)
        self.fig = self.result.figures
        self.t0 = time.monotonic()
        self.victoria: Victoria | None = None
        self.broker: Mosquitto | None = None
        self.receiver: Receiver | None = None
        self.counter: Counter5 | None = None
        self.view: ViewProcess | None = None
        self.compounds: list[Compound] = []
        self.sims: list[SimulatorThread] = []
        self.gateways: list[Gateway] = []
        self.gone: set[str] = set()  # gateways the run killed or froze on purpose

    def log(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    # ---- set-up --------------------------------------------------------------------------------------
    def start(self) -> None:
        o = self.o
        self.victoria = Victoria(self.work / "victoria-data")
        self.victoria.start()
        # queues deep enough for what the counter is owed while it reconnects (mosquitto's default is 1000)
        self.broker = Mosquitto(
            self.work / "mosquitto", extra=["max_queued_messages 100000", "max_queued_bytes 0"]
        )
        self.broker.start()
        self.receiver = Receiver().start()
        self.counter = Counter5(self.broker.host, self.broker.port, f"meterwatch/{COMPANY}/#")
        wait_for(
            lambda: self.counter is not None and self.counter.connects, 30, "the counter's first connect"
        )
        broker_url = f"mqtt://{self.broker.host}:{self.broker.port}"
        for i in range(o.gateways):
            self.compounds.append(
                write_compound(
                    self.work / "sites",
                    i,
                    broker=broker_url,
                    victoria=self.victoria.url,
                    receiver=self.receiver.url("json", "/staff"),
                    keepalive=o.keepalive,
                    heartbeat=o.heartbeat or float(o.keepalive),
                    poll=o.poll,
                )
            )
        for c in self.compounds:
            self.sims.append(SimulatorThread(c.site(), mqtt=False).start())
        for c in self.compounds:
            self.gateways.append(Gateway(c, self.work / f"{c.site_id}.log"))
        self.view = ViewProcess(self.broker.port, "--company", COMPANY, log=self.work / "view.log")
        self.log(f"{o.gateways} gateways, the view, the broker and the store started")
        started = time.monotonic()
        state = self.view_until(
            self.all_online, 60 + 5 * o.gateways, "every gateway online with its meters up"
        )
        self.fig["start_s"] = round(time.monotonic() - started, 1)
        for g in self.gateways:
            g.mark_ready()
        self.log(f"all {len(view_sites(state))} compounds online in the view after {self.fig['start_s']}s")

    def all_online(self, state: dict[str, Any]) -> bool:
        sites = view_sites(state)
        for c in self.compounds:
            g = view_gateway(sites.get(c.site_id), c.gateway)
            if (
                g is None
                or g["offline"]
                or g["devices_up"] != len(c.devices)
                or g["devices_total"] != len(c.devices)
            ):
                return False
        return True

    def view_state(self) -> dict[str, Any] | None:
        assert self.view is not None
        return self.view.api()

    def view_until(
        self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self.gateways_alive()
            state = self.view_state()
            return state if state is not None and predicate(state) else None

        return wait_for(check, timeout, f"the fleet view to show {what}")

    def gateways_alive(self) -> None:
        dead = [g for g in self.gateways if not g.alive() and g.c.gateway not in self.gone]
        if dead:
            g = dead[0]
            raise SimFailure(f"gateway {g.c.gateway} exited with {g.proc.returncode}: {g.output()}")

    # ---- the scenario ----------------------------------------------------------------------------------
    def run(self) -> Result:
        o = self.o
        res = self.result
        self.start()
        out = list(range(o.outages))
        first_half = out[: math.ceil(len(out) / 2)]
        second_half = out[len(first_half) :]
        restored_early = out[: len(out) // 2]  # B1 back while the broker is away

        # 2. the outages, with the broker up: each must show in the view with its incident
        cut_at = time.monotonic()
        for i in out:
            self.sims[i].world.cut_power("B1")
        appear: dict[str, float] = {}

        def outages_shown(state: dict[str, Any]) -> bool:
            sites = view_sites(state)
            now = time.monotonic()
            for i in out:
                c = self.compounds[i]
                shown = [
                    inc
                    for inc in (sites.get(c.site_id) or {}).get("incidents", [])
                    if inc["kind"] == "power_outage" and "B1" in inc["buildings"]
                ]
                if shown and c.site_id not in appear:
                    appear[c.site_id] = round(now - cut_at, 2)
            return len(appear) == len(out)

        try:
            self.view_until(outages_shown, o.timeout, f"the {len(out)} outages with their incidents")
            res.check(
                "outages shown",
                True,
                f"all {len(out)} compounds with supply cut showed in the fleet view with their open power "
                f"incident, {min(appear.values()):.1f}-{max(appear.values()):.1f}s after the cut",
            )
        except SimFailure as exc:
            missing = [self.compounds[i].site_id for i in out if self.compounds[i].site_id not in appear]
            res.check("outages shown", False, f"{exc}; never shown: {missing}")
            raise
        self.fig["outage_appear_s"] = appear
        self.log(f"{len(out)} outages in the view (slowest {max(appear.values())}s after the cut)")

        b1 = {i: self.gateway_incident(i, "B1") for i in out}
        for i in first_half:
            self.gateways[i].post(f"/api/incidents/{b1[i]['id']}/ack")

        # 3. the broker away for S seconds while incidents change
        assert self.broker is not None
        self.broker.stop()
        down_at = time.monotonic()
        self.log(f"broker stopped for {o.broker_stop:.0f}s")
        for i in second_half:
            self.gateways[i].post(f"/api/incidents/{b1[i]['id']}/ack")
        for i in first_half:
            self.gateways[i].post(f"/api/incidents/{b1[i]['id']}/on-site")
        for i in out:
            self.sims[i].world.cut_power("B2")
        for i in restored_early:
            self.sims[i].world.restore_power("B1")
        # the other compounds are not idle either: staff record, note and close a reported fault meanwhile
        calm = [i for i in range(o.gateways) if i not in out]
        for i in calm:
            g = self.gateways[i]
            report = {"code": "003", "title": "lift stuck", "buildings": ["B1"], "note": "a resident called"}
            made = g.post("/api/incidents", report)
            g.post(f"/api/incidents/{made['id']}/note", {"text": "technician on the way"})
            g.post(f"/api/incidents/{made['id']}/resolve", {"note": "lift running again"})
        b2 = {i: self.gateway_incident(i, "B2") for i in out}
        wait_for(
            lambda: all(self.gateways[i].power_incident("B1") is None for i in restored_early),
            o.timeout,
            "B1 resolved in the compounds restored while the broker is away",
        )
        wait_for(
            lambda: all(pending(c) > 0 for c in self.compounds),
            o.timeout,
            "every gateway's events kept in its outbox",
        )
        owed = {c.site_id: pending(c) for c in self.compounds}
        busy = time.monotonic() - down_at
        if busy > o.broker_stop:
            self.log(f"the changes took {busy:.1f}s, longer than the broker's stop: it stays down until now")

        def down_long_enough() -> bool:
            self.gateways_alive()
            return time.monotonic() - down_at >= o.broker_stop

        wait_for(down_long_enough, o.broker_stop + o.timeout, "the end of the broker's stop", interval=0.25)
        self.broker.start()
        up_at = time.monotonic()
        self.fig["broker_down_s"] = round(up_at - down_at, 1)
        self.fig["owed_at_restart"] = owed
        self.log(f"broker started again after {self.fig['broker_down_s']}s; {sum(owed.values())} rows owed")

        # 4. back: outboxes drain, the counter's session is back, the view shows what each gateway holds open
        wait_for(lambda: all(pending(c) == 0 for c in self.compounds), o.timeout, "every outbox drained")
        self.fig["drain_s"] = round(time.monotonic() - up_at, 2)
        counter = self.counter
        assert counter is not None
        back = wait_for(
            lambda: [s for t, s in counter.connects if t > up_at], o.timeout, "the counter reconnected"
        )
        res.check(
            "subscriber session kept",
            back[0],
            "the counting subscriber reconnected to the restarted broker with its session present"
            if back[0]
            else "the restarted broker had lost the counting subscriber's session (session_present false)",
        )
        truth: dict[str, set[tuple[str, int]]] = {}

        def view_matches(state: dict[str, Any]) -> bool:
            sites = view_sites(state)
            for g in self.gateways:
                if g.c.gateway in self.gone:
                    continue
                listed = g.open_incidents()
                if listed is None:
                    return False
                truth[g.c.site_id] = {(g.c.gateway, int(x["id"])) for x in listed}
                if view_incidents(sites.get(g.c.site_id)) != truth[g.c.site_id]:
                    return False
            return True

        try:
            self.view_until(
                view_matches, o.timeout, "every gateway's open incidents after the broker's return"
            )
            opened_away = sum(
                1
                for i in out
                if (self.compounds[i].gateway, int(b2[i]["id"])) in truth[self.compounds[i].site_id]
            )
            res.check(
                "view after the broker's return",
                opened_away == len(out),
                f"the view shows exactly the {sum(map(len, truth.values()))} incidents the gateways hold "
                f"open, {opened_away} of them opened while the broker was away, and none of the "
                f"{len(restored_early)} resolved meanwhile",
            )
        except SimFailure as exc:
            res.check("view after the broker's return", False, str(exc))
        self.fig["view_resync_s"] = round(time.monotonic() - up_at, 2)
        self.log(
            f"outboxes drained {self.fig['drain_s']}s after the restart; "
            f"the view in step after {self.fig['view_resync_s']}s"
        )

        # 5. all clear
        clear_at = time.monotonic()
        for i in out:
            self.sims[i].world.restore_power("B1")
            self.sims[i].world.restore_power("B2")
        wait_for(
            lambda: all(g.open_incidents() == [] for g in self.gateways),
            o.timeout,
            "no open incident at any gateway",
        )
        self.view_until(
            lambda s: all(not x["incidents"] for x in view_sites(s).values()), o.timeout, "no incident"
        )
        self.fig["all_clear_s"] = round(time.monotonic() - clear_at, 2)
        self.log(f"all clear in the view after {self.fig['all_clear_s']}s")

        # 6. offline: one gateway killed, another frozen
        for g in self.gateways:
            g.sample_usage()
        self.offline()

        # 7. exactly once, the store
        self.exactly_once()
        self.stored()
        return res

    def gateway_incident(self, i: int, building: str) -> dict[str, Any]:
        g = self.gateways[i]
        return wait_for(
            lambda: g.power_incident(building), self.o.timeout, f"{g.c.site_id} {building}'s incident"
        )

    def offline(self) -> None:
        o, res = self.o, self.result
        bound = 1.5 * o.keepalive
        killed = self.gateways[-1]
        frozen = self.gateways[-2] if o.hang and len(self.gateways) - o.outages >= 2 else None
        if frozen is not None:
            os.kill(frozen.proc.pid, signal.SIGSTOP)
        os.kill(killed.proc.pid, signal.SIGKILL)
        at = time.monotonic()
        self.gone.add(killed.c.gateway)
        if frozen is not None:
            self.gone.add(frozen.c.gateway)
        seen: dict[str, tuple[float, str]] = {}
        victims = [g for g in (killed, frozen) if g is not None]

        def all_offline(state: dict[str, Any]) -> bool:
            sites = view_sites(state)
            for g in victims:
                v = view_gateway(sites.get(g.c.site_id), g.c.gateway)
                if v is not None and v["offline"] and g.c.gateway not in seen:
                    seen[g.c.gateway] = (time.monotonic() - at, str(v["why"]))
            return len(seen) == len(victims)

        with contextlib.suppress(SimFailure):  # said by the checks below
            self.view_until(all_offline, 3 * bound + 10, "the killed gateway offline")
        k = seen.get(killed.c.gateway)
        self.fig["sigkill_offline_s"] = None if k is None else round(k[0], 2)
        self.fig["sigkill_why"] = None if k is None else k[1]
        res.check(
            "SIGKILL offline",
            k is not None and k[0] <= bound,
            f"{killed.c.gateway} killed with SIGKILL shown offline ({k[1]}) {k[0]:.2f}s later, bound 1.5 x "
            f"keepalive = {bound:.1f}s"
            if k is not None
            else f"{killed.c.gateway} killed with SIGKILL never shown offline within {3 * bound + 10:.0f}s",
        )
        if frozen is not None:
            f = seen.get(frozen.c.gateway)
            allowance = BROKER_SCAN_S + WHOLE_SECONDS_S + POLL_S
            self.fig["sigstop_offline_s"] = None if f is None else round(f[0], 2)
            self.fig["sigstop_why"] = None if f is None else f[1]
            res.check(
                "SIGSTOP offline",
                f is not None and f[0] <= bound + allowance,
                f"{frozen.c.gateway} frozen with SIGSTOP (socket open) shown offline ({f[1]}) "
                f"{f[0]:.2f}s later, "
                f"bound 1.5 x keepalive + {allowance:.1f}s (mosquitto 2.0 checks keepalives every 6 s in "
                f"whole seconds; the view read every {POLL_S}s) = {bound + allowance:.1f}s"
                if f is not None
                else f"{frozen.c.gateway} frozen with SIGSTOP never shown offline",
            )
            os.kill(frozen.proc.pid, signal.SIGKILL)  # it would publish nothing more: end it
        self.log(
            f"offline in the view: SIGKILL {self.fig['sigkill_offline_s']}s ({self.fig['sigkill_why']})"
            + (
                f", SIGSTOP {self.fig.get('sigstop_offline_s')}s ({self.fig.get('sigstop_why')})"
                if frozen
                else ""
            )
        )

    def exactly_once(self) -> None:
        res = self.result
        counter = self.counter
        assert counter is not None
        live = [g for g in self.gateways if g.c.gateway not in self.gone]

        def all_received() -> bool:
            got = counter.received()
            return all(set(read_ledger(g.c).committed) <= got for g in self.gateways)

        with contextlib.suppress(SimFailure):  # said by the check below, with the ids
            wait_for(all_received, self.o.timeout, "every committed event at the counter", interval=0.5)
        for g in live:
            g.stop()
        for g in self.gateways:
            g.wait_stopped()
        ledgers: dict[str, Ledger] = {g.c.site_id: read_ledger(g.c) for g in self.gateways}
        with contextlib.suppress(SimFailure):  # what a clean stop committed last, if anything
            wait_for(
                lambda: all(set(lg.committed) <= counter.received() for lg in ledgers.values()),
                15,
                "the last events at the counter",
            )
        ids, events = counter.snapshot()
        per_gateway: dict[str, dict[str, int]] = {}
        missing: list[str] = []
        extra: list[str] = []
        twice_committed: list[str] = []
        timeline_missing: list[str] = []
        for g in self.gateways:
            lg = ledgers[g.c.site_id]
            committed = set(lg.committed)
            prefix = f"{g.c.site_id}/{g.c.gateway}/"
            got = {i for i in ids if i.startswith(prefix)}
            missing += sorted(committed - got)
            extra += sorted(got - committed)
            twice_committed += [i for i, n in lg.committed.items() if n > 1]
            dup = sum(ids[i] - 1 for i in got)
            # a second witness, independent of the outbox: every incident transition the store holds came
            # (dedup by id) as an incident event
            seen = {
                (int(e["incident"]["id"]), str(e["transition"]), float(e["at"]))
                for i, e in events.items()
                if i.startswith(prefix) and e.get("type") == "incident"
            }
            timeline_missing += [f"{g.c.site_id}:{t}" for t in sorted(lg.timeline - seen)]
            notices = sum(1 for i, e in events.items() if i.startswith(prefix) and e.get("type") == "notice")
            per_gateway[g.c.site_id] = {
                "committed": len(committed),
                "received": len(got),
                "duplicates": dup,
                "notices": notices,
                "pending": lg.pending,
                "dropped": lg.dropped,
            }
        total = sum(p["committed"] for p in per_gateway.values())
        dups = sum(p["duplicates"] for p in per_gateway.values())
        pend = sum(p["pending"] for p in per_gateway.values())
        dropped = sum(p["dropped"] for p in per_gateway.values())
        self.fig["events"] = per_gateway
        self.fig["events_total"] = total
        self.fig["duplicates"] = dups
        self.fig["conflicts"] = list(counter.conflicts)
        self.fig["counter_connects"] = [s for _, s in counter.connects]
        ok = not (
            missing or extra or twice_committed or counter.conflicts or timeline_missing or pend or dropped
        )
        detail = (
            f"{total} events committed by {len(self.gateways)} gateways, each received: "
            f"{len(missing)} missing, {len(extra)} unknown, {dups} duplicate deliveries (counted once), "
            f"{pend} still owed, {dropped} dropped; every one of the stores' "
            f"{sum(len(lg.timeline) for lg in ledgers.values())} transitions arrived"
        )
        if not ok:
            detail += (
                f" | missing {missing[:5]} unknown {extra[:5]} committed twice {twice_committed[:5]} "
                f"one id two payloads {counter.conflicts[:5]} transitions not received {timeline_missing[:5]}"
            )
        res.check("exactly once", ok, detail)
        self.log(f"exactly once: {detail}")

    def stored(self) -> None:
        assert self.victoria is not None
        missing: dict[str, list[str]] = {}
        series = 0
        for c in self.compounds:
            found = self.victoria.series(f'{{site="{c.site_id}"}}')
            series += len(found)
            devices = {s.get("device") for s in found}
            lacking = [d for d in c.devices if d not in devices]
            if lacking:
                missing[c.site_id] = lacking
        self.fig["stored_series"] = series
        self.result.check(
            "readings stored",
            not missing,
            f"every compound's meters have series in VictoriaMetrics ({series} series over "
            f"{len(self.compounds)} sites)"
            if not missing
            else f"no series for {missing}",
        )

    # ---- tear-down -------------------------------------------------------------------------------------
    def close(self) -> None:
        cpu = [g.cpu_pct for g in self.gateways if g.cpu_pct is not None]
        rss = [g.rss_mib for g in self.gateways if g.rss_mib is not None]
        if cpu and rss:  # from the gateways' start-up done to the offline step (outages, broker stop)
            self.fig["gateway_cpu_pct_mean"] = round(statistics.fmean(cpu), 2)
            self.fig["gateway_cpu_pct_max"] = round(max(cpu), 2)
            self.fig["gateway_rss_mib_mean"] = round(statistics.fmean(rss), 1)
            self.fig["gateway_rss_mib_max"] = round(max(rss), 1)
        for g in self.gateways:
            if g.alive():
                with _quiet():
                    os.kill(g.proc.pid, signal.SIGCONT)
                g.stop()
        for g in self.gateways:
            g.wait_stopped(10)
        for part in (self.view, self.counter):
            if part is not None:
                with _quiet():
                    part.stop() if isinstance(part, ViewProcess) else part.close()
        for sim in self.sims:
            with _quiet():
                sim.stop()
        for svc in (self.receiver, self.broker, self.victoria):
            if svc is not None:
                with _quiet():
                    svc.stop()
        self.fig["total_s"] = round(time.monotonic() - self.t0, 1)


class _quiet:
    """Tear-down goes on past one part that fails to stop."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is not None and issubclass(exc_type, Exception)  # type: ignore[arg-type]


def simulate(opts: Options, work: Path, say: Callable[[str], None] = print) -> Result:
    """Run the whole simulation in `work`; every failure (a step that timed out too) is a failed check."""
    sim = Simulation(opts, work, say)
    try:
        sim.run()
    except BaseException as exc:  # pytest.fail from a fixture's start is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = str(exc) if isinstance(exc, SimFailure) else "".join(traceback.format_exception(exc))[-3000:]
        sim.result.check("run completed", False, detail)
    finally:
        sim.close()
    return sim.result


def report(result: Result, opts: Options) -> str:
    lines = [f"{'PASS' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in result.checks]
    figures = {"options": asdict(opts), "ok": result.ok, **result.figures}
    lines.append(json.dumps(figures, separators=(",", ":"), default=str))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m tests.fleet_sim.run")
    p.add_argument("--gateways", type=int, default=20)
    p.add_argument("--outages", type=int, default=5)
    p.add_argument("--broker-stop", type=float, default=120.0, help="seconds the broker is stopped")
    p.add_argument("--keepalive", type=int, default=10, help="the gateways' fleet keepalive, s (5 at least)")
    p.add_argument("--poll", type=float, default=2.0, help="the simulated meters' poll interval, s")
    p.add_argument("--no-hang", action="store_true", help="skip the gateway frozen with SIGSTOP")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores) afterwards")
    a = p.parse_args(argv)
    if a.gateways < 2:
        p.error("--gateways: at least 2 (one is killed at the end)")
    if not 1 <= a.outages <= a.gateways:
        p.error(f"--outages {a.outages}: expected 1 to --gateways ({a.gateways})")
    if a.keepalive < 5:
        p.error("--keepalive: 5 at least (the fleet section's minimum)")
    opts = Options(
        gateways=a.gateways,
        outages=a.outages,
        broker_stop=a.broker_stop,
        keepalive=a.keepalive,
        poll=a.poll,
        hang=not a.no_hang,
    )
    work = Path(tempfile.mkdtemp(prefix="meterwatch-fleet-sim-"))
    result = simulate(opts, work)
    print(report(result, opts), flush=True)
    if a.keep or not result.ok:
        print(f"work directory (logs, site files, stores): {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
