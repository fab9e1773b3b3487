"""From a building's power cut to the first staff notice at a receiver: meterwatch beside Prometheus +
Alertmanager, the same simulated outage measured in the same run.

meterwatch. The real daemon (pollers, bus, detector, incident store, notice policy, outbox, apprise
sender) polls simulated meters over Modbus TCP on loopback every 1 s, with the DEFAULT rules (the site
file has no `rules:` section: power.outage holds `for` 5 s, comm.absent 5 s; see
gateway/config/default_rules.py) and every other setting at its default, except the poll interval (1 s,
which is also the default) and a notify section with one staff channel: apprise `json://` to a local HTTP
receiver (bench/receiver.py), English, the default per_minute (20). Each building has its own Modbus TCP
line (its converter, not powered by the building), a main meter with its own auxiliary supply (reads 0 V
on a cut) and a unit meter powered by the circuit it measures (goes silent on a cut), as in
bench/rules_live.py. The figure is the time from the simulator's cut (World.cut_power) to the arrival at
the receiver of the staff notice of the building's power outage ("New incident ... power outage: Bnn").

Why a different building per run: an outage recurring within detection.reopen_window (default 30 min)
reopens the incident, and a reopening sends staff nothing new. So run i cuts building i (the site has one
building per run) and restores it when its notices are in; the previous building's resolution notices
(60 s later) arrive meanwhile and are not counted.

Prometheus + Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`; the half is skipped with
a clear line when either is missing). What Prometheus scrapes is a small exporter of the simulated main
meters' voltage (bench/promstack.py VoltageExporter: `meter_voltage_volts{meter, phase="l1"}`), read from
the same simulator World at scrape time. Not the daemon's /metrics: it has no readings (only device and
incident gauges, and an incident gauge would make the peer wait for meterwatch's own detection). The
exporter is the peer's best case: it reads the value with no Modbus round trip and no poll period of its
own, and sees the cut at the first scrape after it. Prometheus: scrape_interval and evaluation_interval
15 s (the common setting; the shipped default is 1 m), rule `meter_voltage_volts < 22` with `for: 10s`.
Alertmanager: one route, group_by ['...'] (every alert its own group), group_wait 30 s (its default,
written out; --group-wait changes it), no HA cluster (--cluster.listen-address=), a webhook receiver on
the same local HTTP receiver. The figure is the time from the same cut to the first webhook POST carrying
a firing alert of that building's main meter. The set-up follows ../shared/peers/prometheus-alertmanager/,
where first webhooks came 60.6-66.6 s after the drops.

Fairness. Both sides see one cut at one instant, timed with one clock, to the first message at a receiver
on loopback. Before a cut measured on both sides the bench waits a random 0-15 s (seeded), so cuts land at
random phases of Prometheus' 15 s scrape and evaluation cycles (and of the 1 s poll); runs measured on
meterwatch only wait 0-1 s. The first --prom-runs runs (default: all) are measured on both sides; each
takes about a minute, so `--prom-runs 5` keeps a run of 20 short.

Prints one human line per side and one JSON line.

    .venv/bin/python bench/notify_latency.py [--runs 20] [--prom-runs N] [--group-wait 30s]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# run as `python bench/notify_latency.py`, this file's folder comes first on sys.path and its rules.py
# hides the `rules` package: put the repository root there instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.modules.pop("rules", None)

from bench.promstack import PeerMissing, PromStack, VoltageExporter, missing  # noqa: E402
from bench.receiver import BenchReceiver, Hit  # noqa: E402
from bench.rules_live import DaemonThread, all_polled, percentile  # noqa: E402
from bench.waiting import wait_for  # noqa: E402
from gateway.config import Site, load_site  # noqa: E402
from gateway.config.default_rules import DEFAULT_RULES  # noqa: E402
from gateway.core.durations import parse_duration  # noqa: E402
from simulators.ports import free_ports  # noqa: E402
from simulators.runner import SimulatorThread  # noqa: E402

POLL = 1.0
GOAL_P95 = 10.0
PROM_FOR = "10s"  # the alert rule's `for`
STAFF_PATH = "/staff"
WEBHOOK_PATH = "/alertmanager"
OUTAGE_RULE = next(r for r in DEFAULT_RULES if r.id == "power.outage")


def building_id(i: int) -> str:
    return f"B{i + 1:02d}"


def write_site(directory: Path, buildings: int, staff_url: str) -> Site:
    """`buildings` buildings, each on its own Modbus TCP line; default rules; one staff channel."""
    ports = free_ports(buildings)
    blds, lines, devices = [], [], []
    for i in range(buildings):
        b = building_id(i)
        blds.append(f"  - {{id: {b}, households: 40, domains: [{{id: {b}-power, kind: power}}]}}")
        lines.append(f"  - {{id: {b}-line, transport: tcp, host: 127.0.0.1, port: {ports[i]}}}")
        devices.append(
            f"  - {{id: {b}-main, building: {b}, domain: {b}-power, role: main_power, households: 40,"
            f" line: {b}-line, unit: 1, profile: sdm630, poll_interval: {POLL}s}}"
        )
        devices.append(
            f"  - {{id: {b}-unit, building: {b}, domain: {b}-power, role: unit_power, households: 1,"
            f" line: {b}-line, unit: 2, profile: sdm120, poll_interval: {POLL}s, line_powered: true}}"
        )
    text = (
        "site: {id: notifybench, name: Notify latency bench, timezone: Asia/Shanghai}\n"
        "buildings:\n" + "\n".join(blds) + "\n"
        "lines:\n" + "\n".join(lines) + "\n"
        "devices:\n" + "\n".join(devices) + "\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        'notify:\n  hotline: "400-800-1234"\n  channels:\n'
        f'    - {{name: staff, url: "{staff_url}", audiences: [staff], language: en}}\n'
    )
    path = directory / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


def staff_notice_of(building: str, after: float) -> Callable[[list[Hit]], Hit | None]:
    """The first staff notice of `building`'s power outage that arrived after `after`."""

    def find(hits: list[Hit]) -> Hit | None:
        for h in hits:
            if h.path != STAFF_PATH or h.at < after:
                continue
            body = h.json()
            title, message = str(body.get("title", "")), str(body.get("message", ""))
            if f": {building}" in title and "power outage" in title and message.startswith("New incident"):
                return h
        return None

    return find


def webhook_of(meter: str, after: float) -> Callable[[list[Hit]], Hit | None]:
    """The first Alertmanager webhook carrying a firing alert of `meter` that arrived after `after`."""

    def find(hits: list[Hit]) -> Hit | None:
        for h in hits:
            if h.path != WEBHOOK_PATH or h.at < after:
                continue
            for a in h.json().get("alerts", []):
                if a.get("status") == "firing" and a.get("labels", {}).get("meter") == meter:
                    return h
        return None

    return find


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(values), 2),
        "p95_s": round(percentile(values, 95), 2),
        "min_s": round(min(values), 2),
        "max_s": round(max(values), 2),
        "each_s": [round(v, 2) for v in values],
    }


def measure(
    runs: int = 20,
    prom_runs: int | None = None,
    group_wait: str = "30s",
    prom_interval: str = "15s",
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    prom_runs = runs if prom_runs is None else max(0, min(prom_runs, runs))
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    logging.getLogger("meterwatch").setLevel(logging.ERROR)  # every run cuts power on purpose
    prom_skipped: str | None = None
    if prom_runs and missing():
        prom_skipped = f"not installed: {', '.join(missing())} (apt-get install {' '.join(missing())})"
        prom_runs = 0
    elif not prom_runs:
        prom_skipped = "--prom-runs 0"
    interval_s = parse_duration(prom_interval)
    ours: list[float] = []
    theirs: list[float] = []
    sample_title = ""
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mw-notify-bench-") as tmp, BenchReceiver() as rx:
        root = Path(tmp)
        site = write_site(root, runs, rx.url("json", STAFF_PATH))
        sim = SimulatorThread(site, mqtt=False)
        daemon = DaemonThread(site, root / "state")
        exporter: VoltageExporter | None = None
        stack: PromStack | None = None
        sim.start()
        try:
            daemon.start()
            wait_for(lambda: all_polled(daemon), 60.0, "every device polled once")
            world = sim.world
            if prom_runs:
                mains = [f"{building_id(i)}-main" for i in range(runs)]
                exporter = VoltageExporter(mains, lambda m: world.value(m, "voltage_l1")).start()
                stack = PromStack(
                    root / "peer",
                    exporter.target,
                    f"http://127.0.0.1:{rx.port}{WEBHOOK_PATH}",
                    interval=prom_interval,
                    for_=PROM_FOR,
                    group_wait=group_wait,
                )
                try:
                    stack.start()
                    stack.wait_scraped()
                    versions = stack.versions()
                except PeerMissing as e:
                    prom_skipped, prom_runs = str(e), 0
            for i in range(runs):
                b = building_id(i)
                both = i < prom_runs
                time.sleep(rng.uniform(0, interval_s if both else POLL))
                cut = time.monotonic()
                world.cut_power(b)
                notice = rx.wait_for(staff_notice_of(b, cut), 120.0, f"the staff notice of {b}")
                ours.append(notice.at - cut)
                sample_title = sample_title or str(notice.json().get("title"))
                line = f"run {i + 1}/{runs} {b}: meterwatch {notice.at - cut:.2f}s"
                if both:
                    hook = rx.wait_for(webhook_of(f"{b}-main", cut), 300.0, f"the webhook of {b}")
                    theirs.append(hook.at - cut)
                    line += f", prometheus+alertmanager {hook.at - cut:.2f}s"
                world.restore_power(b)
                say(line)
        finally:
            if stack is not None:
                stack.stop()
            if exporter is not None:
                exporter.stop()
            daemon.stop()
            sim.stop()
    out: dict[str, Any] = {
        "runs": runs,
        "poll_interval_s": POLL,
        "rules": "default",
        "power_outage_for_s": OUTAGE_RULE.for_,
        "goal_p95_s": GOAL_P95,
        "meterwatch": {**summary(ours), "first_notice_title": sample_title},
    }
    if theirs:
        out["prometheus_alertmanager"] = {
            "runs": len(theirs),
            "scrape_interval": prom_interval,
            "evaluation_interval": prom_interval,
            "for": PROM_FOR,
            "group_wait": group_wait,
            "target": "exporter of the simulated main meters' voltage (read at scrape time)",
            "versions": versions,
            **summary(theirs),
            "meterwatch_same_runs_median_s": round(statistics.median(ours[: len(theirs)]), 2),
        }
    else:
        out["prometheus_alertmanager"] = {"skipped": prom_skipped}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="power cuts measured on meterwatch (default 20)")
    ap.add_argument(
        "--prom-runs",
        type=int,
        default=None,
        help="of those, how many are also measured through Prometheus + Alertmanager, about a minute "
        "each (default: all; 0: none)",
    )
    ap.add_argument("--group-wait", default="30s", help="Alertmanager group_wait (default 30s, its default)")
    ap.add_argument(
        "--prom-interval",
        default="15s",
        help="Prometheus scrape and evaluation interval (default 15s; the smoke test uses 1s)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the random waits before the cuts")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    r = measure(args.runs, args.prom_runs, args.group_wait, args.prom_interval, args.seed, progress)
    mw, pa = r["meterwatch"], r["prometheus_alertmanager"]
    verdict = "met" if mw["p95_s"] <= GOAL_P95 else "MISSED"
    print(
        f"notify latency over {r['runs']} runs (default rules, power.outage for {r['power_outage_for_s']:g}s,"
        f" poll {POLL:g}s): power cut -> first staff notice at the json:// receiver median {mw['median_s']}s,"
        f" p95 {mw['p95_s']}s, max {mw['max_s']}s (goal p95 <= {GOAL_P95:g}s: {verdict})"
    )
    if "skipped" in pa:
        print(f"prometheus + alertmanager: skipped ({pa['skipped']})")
    else:
        print(
            f"prometheus + alertmanager over {pa['runs']} of those runs (scrape and evaluation "
            f"{pa['scrape_interval']}, for {pa['for']}, group_wait {pa['group_wait']}): power cut -> first "
            f"webhook median {pa['median_s']}s, p95 {pa['p95_s']}s, min {pa['min_s']}s, max {pa['max_s']}s "
            f"(meterwatch in the same runs: median {pa['meterwatch_same_runs_median_s']}s)"
        )
    print(json.dumps({"bench": "notify_latency", **r}))


if __name__ == "__main__":
    main()
