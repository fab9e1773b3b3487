"""Issue #3 acceptance: VictoriaMetrics down for 60 s while `meterwatch run` polls the simulated site, and the
gateway killed with SIGKILL in the middle of the gap and started again: everything it acknowledged before the
kill arrives, and so does everything the second process polls.

How the test knows what was acknowledged before the kill (the process is gone, its memory with it):
- the daemon runs with `--tap FILE` (gateway/sink/tap.py): every published Sample, in the order the sink
  reads them, as JSON lines. That is what was POLLED, not what was acknowledged: the samples of the last
  flush interval may still have been in the sink's queue when the kill came;
- the spool file itself, copied right after the kill, before the restart opens it: its rows are what was
  acknowledged and not yet written. The LAST spooled row marks how far in the tap acknowledgement reached:
  every tapped sample up to it was either written before the outage or is in the spool.
So: everything tapped up to the last spooled sample, and every spooled row, must come back value for value.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_site
from gateway.core.types import Sample
from gateway.sink.lineproto import LineEncoder
from gateway.sink.tap import read_tap
from simulators.runner import SimulatorThread
from tests.fixtures.service import stop_process
from tests.fixtures.sim import write_sim_site
from tests.fixtures.victoria import (
    PointKey,
    Victoria,
    differences,
    expected_points,
    same_value,
)
from tests.helpers import wait_until

SELECTOR = '{site="simtest"}'
OUTAGE = 60.0
MEASUREMENT_SEP = "_"


class Gateway:
    """`meterwatch run SITE --tap TAP` as a subprocess; its state dir is var/<site id> under `cwd`."""

    def __init__(self, site_path: Path, cwd: Path) -> None:
        self.site_path = site_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def spool(self) -> Path:
        return self.cwd / "var" / "simtest" / "spool.sqlite"

    def start(self) -> Path:
        self.runs += 1
        tap = self.cwd / f"tap{self.runs}.jsonl"
        exe = Path(sys.executable).with_name("meterwatch")
        log = (self.cwd / f"gateway{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(exe), "run", str(self.site_path), "--tap", str(tap), "--log-level", "info"],
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return tap

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is None:
            return
        stopped = stop_process(self.proc, 30)
        self.proc = None
        if not stopped:
            pytest.fail("meterwatch did not stop within 30 s of SIGTERM")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def gateway(tmp_path: Path, victoria: Victoria) -> Iterator[Gateway]:
    site_path = write_sim_site(tmp_path)
    site_path.write_text(
        site_path.read_text(encoding="utf-8")
        + f'influx: {{url: "{victoria.url}", bucket: mw, batch_size: 500, flush_interval: 200ms}}\n'
        + "spool: {mode: durable}\nhttp: {enabled: false}\n",
        encoding="utf-8",
    )
    sim = SimulatorThread(load_site(site_path), mqtt=False, noise=0.01, seed=11).start()
    gw = Gateway(site_path, tmp_path)
    try:
        yield gw
    finally:
        gw.terminate()
        sim.stop()


def spooled_lines(spool: Path, into: Path) -> list[str]:
    """The lines of a spool left by a killed process, oldest first (a chunk row holds a batch's lines joined
    by newlines). Read from a copy (file + WAL) so that the restarted gateway finds the original exactly as
    the kill left it."""
    into.mkdir()
    for suffix in ("", "-wal"):
        src = Path(str(spool) + suffix)
        if src.exists():
            shutil.copyfile(src, into / (spool.name + suffix))
    db = sqlite3.connect(into / spool.name)
    try:
        rows = db.execute("SELECT body FROM chunks ORDER BY first")
        return [line for (body,) in rows for line in bytes(body).decode("utf-8").split("\n")]
    finally:
        db.close()


def points_of_line(line: str) -> dict[PointKey, float]:
    """Points of one of our encoder's lines (this site's names need no escapes)."""
    head, fields, ts = line.split(" ")
    measurement, *tags = head.split(",")
    device = dict(t.split("=", 1) for t in tags)["device"]
    ms = int(ts) // 1000  # microseconds written, milliseconds kept by VictoriaMetrics
    out: dict[PointKey, float] = {}
    for f in fields.split(","):
        name, value = f.split("=", 1)
        out[(measurement + MEASUREMENT_SEP + name, device, ms)] = float(value.removesuffix("i"))
    return out


def encoded(samples: list[Sample], enc: LineEncoder) -> list[str]:
    return [line for s in samples if (line := enc.encode(s)) is not None]


def test_kill_9_in_the_middle_of_a_60s_outage_loses_nothing_acknowledged(
    gateway: Gateway, victoria: Victoria, tmp_path: Path
) -> None:
    site = load_site(gateway.site_path)
    enc = LineEncoder(site)
    tap1 = gateway.start()
    wait_until(lambda: victoria.count(SELECTOR) > 0, timeout=60, interval=0.5, what="a first write")

    victoria.stop()
    down_at = time.monotonic()
    polled_before_outage = len(read_tap(tap1))
    wait_until(
        lambda: time.monotonic() - down_at >= OUTAGE / 2, timeout=OUTAGE, interval=0.5, what="half the outage"
    )
    assert gateway.alive(), (tmp_path / "gateway1.log").read_text()
    gateway.kill()
    spooled = spooled_lines(gateway.spool, tmp_path / "spool-at-kill")
    polled1 = read_tap(tap1)
    lines1 = encoded(polled1, enc)
    assert len(lines1) == len(polled1)  # the poller publishes no sample without a finite value
    assert spooled, "the first half of the outage should be waiting in the spool"
    assert len(polled1) - polled_before_outage >= 10 * OUTAGE / 2 / 3, "polling went on during the outage"

    # The spooled rows the tap saw are one contiguous run of the tap, in order; rows after the tap's end
    # (the tap writes after the sink's commit at worst) are still acknowledged and checked below.
    position = {line: i for i, line in enumerate(lines1)}
    seen = [position[line] for line in spooled if line in position]
    assert seen, "no spooled row is in the tap"
    assert seen == list(range(seen[0], seen[0] + len(seen))), "spool rows out of order or with holes"
    assert all(line in position for line in spooled[: len(seen)])
    acknowledged = lines1[: seen[-1] + 1]
    unacknowledged = len(lines1) - len(acknowledged)
    assert unacknowledged < len(lines1) // 10, f"{unacknowledged} samples polled but never acknowledged"

    tap2 = gateway.start()
    wait_until(lambda: len(read_tap(tap2)) > 0, timeout=60, interval=0.5, what="the restarted gateway polls")
    wait_until(
        lambda: time.monotonic() - down_at >= OUTAGE,
        timeout=OUTAGE,
        interval=0.5,
        what="the end of the outage",
    )
    victoria.start()
    polled2 = read_tap(tap2)  # polled by the second process before VictoriaMetrics was back

    want: dict[PointKey, float] = {}
    for line in acknowledged:
        want.update(points_of_line(line))
    from_spool: dict[PointKey, float] = {}
    for line in spooled:
        from_spool.update(points_of_line(line))
    want.update(from_spool)
    want.update(expected_points(polled2, enc))
    # the restarted sink replays the spool first; its backoff reaches 10 s, hence the generous deadline
    deadline = time.monotonic() + 150
    while True:
        got, _ = victoria.stored(SELECTOR)
        missing = [k for k in want if k not in got]
        if not missing:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(missing)} of {len(want)} acknowledged points never arrived, e.g. {missing[:5]}"
            )
        time.sleep(1.0)
    gateway.terminate()

    got, _ = victoria.stored(SELECTOR)
    assert differences(got, want) == []
    # nothing foreign: every stored point was polled by one of the two processes, with the polled value
    allowed = expected_points([*polled1, *read_tap(tap2)], enc)
    allowed.update(from_spool)
    assert [k for k in got if k not in allowed] == []
    assert all(same_value(v, allowed[k]) for k, v in got.items())
    # the samples acknowledged during the outage: all there (counted, not only sampled)
    gap_lines = [ln for ln in acknowledged[polled_before_outage:] if ln]
    gap_points = {k: v for ln in gap_lines for k, v in points_of_line(ln).items()}
    assert sum(1 for k in gap_points if k in got) == len(gap_points) > 0
