"""Outbox throughput: notices per second through apprise json:// when 100 buildings lose power at once.

What owes the notices. A site of 100 buildings, each a power domain with one main meter. The real rules
engine (gateway.incidents.replay.run_replay, default rules) sees every main meter drop to 0 V at the same
second: 100 domain power-outage incidents. The real notice policy (gateway/respond/policy.py) is fed their
transitions and ticked past the residents' confirmation delay, so each incident owes a staff notice, a
residents' notice and a utility report: 300 owed notices, the burst a site-wide cut leaves behind.

What is timed. The respond side as the daemon runs it, without the detector: the owed notices are written
into a fresh outbox (gateway/respond/outbox.py `enqueue`, one SQLite transaction, WAL, synchronous=FULL as
in the incident store), the channel workers (gateway/respond/sender.py `Sender`, one thread per channel,
real apprise, real Jinja2 rendering through gateway/respond/messages.py, every result recorded in the
outbox and its delivery log) are woken as after the store's commit, and the clock runs from just before
the enqueue to the arrival of the last message at a local HTTP receiver (bench/receiver.py), after which
every outbox row must read SENT.

The rate limit. Each channel has a token bucket of `notify.channels[].per_minute` messages (default 20,
full at start, at most 600); a burst larger than the tokens goes out as a digest. So that the first two
phases measure throughput and not the limit, their channels are configured with per_minute: 600, the
maximum: the bucket starts with 600 tokens, more than any phase sends, and every notice is its own
message. The third phase keeps the default (20) to show what a real robot channel does with the burst.

Phases (each with a fresh outbox, and receiver paths of its own):
  1. one channel: the 100 staff notices through one `staff` channel (one worker thread: sequential).
  2. three channels: all 300 notices through `staff`, `residents` and `utility` channels at once (three
     worker threads in parallel; each channel carries 100).
  3. default rate limit: the 100 staff notices through one channel with per_minute 20: messages at the
     receiver (digests included) and the time until every notice is out.

Prints one human line per phase and one JSON line. Runs in well under a minute.

    .venv/bin/python bench/outbox_throughput.py [--buildings 100]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# run as `python bench/outbox_throughput.py`, this file's folder comes first on sys.path and its rules.py
# hides the `rules` package: put the repository root there instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.modules.pop("rules", None)

from bench.receiver import BenchReceiver  # noqa: E402
from gateway.config import Site, load_site  # noqa: E402
from gateway.core.types import Sample  # noqa: E402
from gateway.incidents.replay import run_replay  # noqa: E402
from gateway.respond import outbox  # noqa: E402
from gateway.respond.messages import Messages  # noqa: E402
from gateway.respond.model import NoticeState, Owed, Stage  # noqa: E402
from gateway.respond.outbox import SqliteOutbox  # noqa: E402
from gateway.respond.policy import NoticePolicy  # noqa: E402
from gateway.respond.sender import Sender  # noqa: E402
from rules.model import IncidentChange  # noqa: E402

T0 = 1_760_000_000.0  # 2025-10-09 16:53:20 in Asia/Shanghai: outside any quiet hours
CUT_AT = 10  # seconds of normal readings before every building goes dark
THROUGHPUT_PER_MINUTE = 600  # the most notify.channels[].per_minute allows: the bucket never runs dry here


def write_site(directory: Path, buildings: int, channels: list[str]) -> Site:
    """`buildings` buildings, each a power domain with one main meter (MQTT: nothing is polled here); a
    notify section with the given channel entries (YAML flow mappings)."""
    blds, devices = [], []
    for i in range(buildings):
        bid = f"B{i + 1:03d}"
        blds.append(f"  - {{id: {bid}, households: 40, domains: [{{id: {bid}-power, kind: power}}]}}")
        devices.append(
            f"  - {{id: {bid}-main, building: {bid}, domain: {bid}-power, role: main_power, households: 40,"
            " source: mqtt, expected_interval: 1s}"
        )
    text = (
        "site: {id: outboxbench, name: Outbox bench, timezone: Asia/Shanghai}\n"
        "buildings:\n" + "\n".join(blds) + "\n"
        "devices:\n" + "\n".join(devices) + "\n"
        'notify:\n  hotline: "400-800-1234"\n  channels:\n' + "\n".join(f"    - {c}" for c in channels) + "\n"
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


def owed_by_cut(site: Site) -> list[Owed]:
    """Every main meter reads 230 V, then 0 V from CUT_AT on: the notices the policy owes once the
    residents' confirmation delay has passed (staff open, residents' notice, utility report each)."""
    meters = [d.id for d in site.config.devices]
    delay = max(site.config.notify.confirm_delay.values())
    samples = []
    for s in range(CUT_AT + 30):
        v = 0.0 if s >= CUT_AT else 230.0
        for m in meters:
            samples.append(Sample(m, T0 + s, {"voltage_l1": v, "voltage_l2": v, "voltage_l3": v}))
    result = run_replay(site, samples, tail=delay + 60)
    policy = NoticePolicy(site)
    changes = [t for t in result.transitions if isinstance(t, IncidentChange)]
    fed = policy.feed(changes, result.engine.incidents)
    ticked = policy.tick(result.end)
    return [*fed.owed, *ticked.owed]


@dataclass
class Phase:
    name: str
    rows: int  # outbox rows enqueued (one per owed notice and channel serving it)
    messages: int  # requests at the receiver
    digests: int
    seconds: float  # enqueue -> last arrival
    per_channel: dict[str, dict[str, float]]

    def figures(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "receiver_count": self.messages,
            "digests": self.digests,
            "seconds": round(self.seconds, 3),
            "notices_per_s": round(self.rows / self.seconds, 1),
            "messages_per_s": round(self.messages / self.seconds, 1),
            "channels": self.per_channel,
        }


def run_phase(
    name: str, directory: Path, rx: BenchReceiver, buildings: int, channels: dict[str, tuple[str, int]]
) -> Phase:
    """`channels`: channel name -> (audience, per_minute). Enqueue what the cut owes to them, send, time."""
    prefix = f"/{name}"
    entries = [
        f'{{name: {ch}, url: "{rx.url("json", f"{prefix}/{ch}")}", audiences: ["{aud}"], per_minute: {pm}}}'
        for ch, (aud, pm) in channels.items()
    ]
    site = write_site(directory, buildings, entries)
    owed = owed_by_cut(site)
    messages = Messages.for_site(site)

    def render(stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
        r = messages.render(stage, language, context)
        return r.title, r.body

    path = directory / "incidents.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    outbox.create(db)
    box = SqliteOutbox(path)
    sender = Sender(site.config.notify, box, render)
    sender.start()
    try:
        t0 = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        rows = outbox.enqueue(db, owed, site.config.notify.channels, time.time())
        db.execute("COMMIT")
        sender.wake()
        deadline = t0 + 300
        while box.depth()[0] > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {box.depth()[0]} notices still undelivered after 300 s")
            time.sleep(0.05)
        hits = [h for h in rx.hits() if h.path.startswith(prefix + "/")]
        last = max(h.at for h in hits)
        states = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        if states != {str(NoticeState.SENT): rows}:
            raise RuntimeError(f"{name}: outbox rows not all sent: {states}")
    finally:
        sender.stop(10.0)
        box.close()
        db.close()
    stats = sender.stats()
    per_channel: dict[str, dict[str, float]] = {}
    for ch in channels:
        ch_hits = [h.at for h in hits if h.path == f"{prefix}/{ch}"]
        ch_rows = sum(stats[ch].notices.values())  # rows the channel's worker recorded (all SENT)
        ch_seconds = max(ch_hits) - t0
        per_channel[ch] = {
            "rows": ch_rows,
            "receiver_count": len(ch_hits),
            "seconds": round(ch_seconds, 3),
            "notices_per_s": round(ch_rows / ch_seconds, 1),
        }
    return Phase(
        name=name,
        rows=rows,
        messages=len(hits),
        digests=sum(s.digests for s in stats.values()),
        seconds=last - t0,
        per_channel=per_channel,
    )


def measure(buildings: int = 100) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mw-outbox-bench-") as tmp, BenchReceiver() as rx:
        root = Path(tmp)
        fast = THROUGHPUT_PER_MINUTE
        one = run_phase("one", root / "one", rx, buildings, {"staff": ("staff", fast)})
        three = run_phase(
            "three",
            root / "three",
            rx,
            buildings,
            {"staff": ("staff", fast), "residents": ("residents", fast), "utility": ("utility:power", fast)},
        )
        default_pm = 20  # gateway/config/notify.py Channel.per_minute's default
        limited = run_phase("limited", root / "limited", rx, buildings, {"staff": ("staff", default_pm)})
        received = rx.count()
    return {
        "buildings": buildings,
        "incidents": buildings,
        "throughput_per_minute": fast,
        "one_channel": one.figures(),
        "three_channels": three.figures(),
        "default_rate_limit": {"per_minute": default_pm, **limited.figures()},
        "receiver_total": received,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buildings", type=int, default=100, help="buildings in outage at once (default 100)")
    args = ap.parse_args()
    r = measure(args.buildings)
    one, three, lim = r["one_channel"], r["three_channels"], r["default_rate_limit"]
    n = r["buildings"]
    print(
        f"outbox throughput, {n} buildings out at once, one json:// channel (per_minute "
        f"{r['throughput_per_minute']}, no digest): {one['rows']} staff notices enqueued -> last at the "
        f"receiver in {one['seconds']}s, {one['notices_per_s']} notices/s, "
        f"receiver count {one['receiver_count']}"
    )
    print(
        f"outbox throughput, three json:// channels at once (staff, residents, utility; per_minute "
        f"{r['throughput_per_minute']}): {three['rows']} notices in {three['seconds']}s, "
        f"{three['notices_per_s']} notices/s, receiver count {three['receiver_count']}"
    )
    print(
        f"with the default rate limit (per_minute {lim['per_minute']}, one staff channel): {lim['rows']} "
        f"notices went out as {lim['receiver_count']} messages ({lim['digests']} digests) "
        f"in {lim['seconds']}s"
    )
    print(json.dumps({"bench": "outbox_throughput", **r}))


if __name__ == "__main__":
    main()
