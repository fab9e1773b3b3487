"""Issue #8 item 2: a full disk must not stop collection or detection.

The full disk is real: a tmpfs of a few MiB mounted inside a private user and mount namespace (`unshare
--user --map-root-user --mount`: no root needed where unprivileged user namespaces are allowed, Debian's
default; as root it works the same), filled with a filler file to its last bytes. The spool (spool.path)
lives there; the rest of the state dir (incident store, dead letters) on the ordinary disk. The daemon is the
real `meterwatch run`, started inside the namespace with nsenter, polling simulated meters, with a real
VictoriaMetrics that is stopped: every sample must go to the spool, which cannot take them.

What must hold: the spool sheds (counted by reason) instead of blocking the bus, the rules keep getting
every reading (an outage becomes an incident while the disk is full), /readyz and a metric say storage is
failing, the first error logged is the disk-full one (not "cannot rollback"), SIGTERM stops it within the
systemd unit's stop timeout, a restart on the full disk runs (no traceback, no quarantine of the healthy
spool) and, once there is room and the database is back, the backlog reaches the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app.daemon import build_runtime, serve
from gateway.config import Site, load_site
from gateway.core.types import Sample
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Spool
from simulators.runner import SimulatorThread
from tests.fixtures.sim import write_sim_site
from tests.fixtures.victoria import Victoria, differences, expected_points
from tests.helpers import REPO, eventually, free_port, wait_until

UNIT = REPO / "deploy" / "systemd" / "meterwatch.service"


def stop_timeout() -> float:
    """TimeoutStopSec= of the shipped systemd unit: how long systemd waits after SIGTERM."""
    m = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(encoding="utf-8"), re.M)
    assert m, f"no TimeoutStopSec= in {UNIT}"
    return float(m.group(1))


class SmallDisk:
    """A tmpfs of `size` at `mountpoint`, mounted only inside a private user+mount namespace that a holder
    process keeps alive. Programs run in it through `nsenter`; outside, `mountpoint` is an empty dir."""

    def __init__(self, mountpoint: Path, size: str, options: str = "") -> None:
        self.mountpoint = mountpoint
        self.size = size
        self.options = options
        self.holder: subprocess.Popen[str] | None = None

    def start(self) -> SmallDisk:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        script = 'mount -t tmpfs -o "size=$1$2" tmpfs "$0" && echo mounted && exec sleep 100000'
        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]
        self.holder = subprocess.Popen(
            [*argv, str(self.mountpoint), self.size, f",{self.options}" if self.options else ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "mounted":
            self.holder.wait(timeout=10)
            err = self.holder.stderr.read() if self.holder.stderr else ""
            pytest.fail(f"cannot mount a tmpfs in a user namespace (unshare -Urm): {err.strip()}")
        return self

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run inside the namespace, where the tmpfs is mounted."""
        assert self.holder is not None
        pid = str(self.holder.pid)
        # --wd: entering a mount namespace moves to its root; the checkout's code must be the one run
        flags = ["--user", "--mount", "--preserve-credentials", f"--wd={REPO}"]
        return ["nsenter", "--target", pid, *flags, *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=60, cwd=REPO)
        if check and done.returncode != 0:
            pytest.fail(f"{cmd} in the namespace failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def python(self, code: str, *args: str) -> str:
        return self.run(sys.executable, "-c", code, *args).stdout

    def free(self) -> int:
        return int(
            self.python(
                "import os,sys; s=os.statvfs(sys.argv[1]); print(s.f_bavail*s.f_frsize)", str(self.mountpoint)
            )
        )

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until at most `leave` bytes are free (0: until ENOSPC)."""
        self.python(_FILL, str(self.mountpoint / "filler"), str(leave))

    def unfill(self) -> None:
        self.run("rm", "-f", str(self.mountpoint / "filler"))

    def listing(self) -> list[str]:
        return sorted(
            self.python(
                "import os,sys; print('\\n'.join(os.listdir(sys.argv[1])))", str(self.mountpoint)
            ).split()
        )

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=10)


_FILL = """
import os, sys
path, leave = sys.argv[1], int(sys.argv[2])
def free():
    s = os.statvfs(os.path.dirname(path))
    return s.f_bavail * s.f_frsize
with open(path, "ab") as fh:
    try:
        while free() > leave:
            fh.write(b"\\0" * max(4096, min(1 << 20, free() - leave)))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # ENOSPC: full
"""


class Daemon:
    """`meterwatch run` inside the small disk's namespace; its output goes to a log file."""

    def __init__(self, disk: SmallDisk, site: Path, state: Path, log: Path, port: int) -> None:
        self.log = log
        self.port = port
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                disk.argv(sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(state)),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def dump(self) -> str:
        return "\n".join(self.lines()[-60:])

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"meterwatch exited ({self.proc.returncode}):\n{self.dump()}")
        return True

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """name{labels} -> value; {} while the server does not answer yet."""
        self.alive()
        try:
            _, text = self.get("/metrics")
        except OSError:
            return {}
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def wait_metrics(
        self, ok: Callable[[dict[str, float]], bool], timeout: float, what: str
    ) -> dict[str, float]:
        """The first scrape for which `ok` holds."""
        seen: list[dict[str, float]] = []

        def check() -> bool:
            m = self.metrics()
            if m and ok(m):
                seen.append(m)
            return bool(seen)

        wait_until(check, timeout, what=what)
        return seen[0]

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def open_incidents(self) -> list[dict[str, Any]]:
        _, body = self.get("/api/incidents")
        incidents = json.loads(body)["incidents"]
        assert isinstance(incidents, list)
        return incidents

    def terminate(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"meterwatch ignored SIGTERM for {timeout}s (the unit's stop timeout):\n{self.dump()}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


SHED_FULL = 'meterwatch_sink_shed_samples_total{reason="disk_full"}'
FAILING = "meterwatch_spool_failing{}"
PUBLISHED = "meterwatch_bus_published_total{}"
SPOOL_ERROR = 'msg="spool cannot store samples'


def sim_site(tmp_path: Path, disk: SmallDisk, victoria: Victoria, port: int) -> Path:
    path = write_sim_site(tmp_path, poll_interval="500ms")
    path.write_text(
        path.read_text(encoding="utf-8")
        + f'influx: {{url: "{victoria.url}", bucket: mw, batch_size: 200, flush_interval: 200ms}}\n'
        + f'spool: {{path: "{disk.mountpoint / "spool.sqlite"}"}}\n'
        + f"http: {{host: 127.0.0.1, port: {port}}}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    d = SmallDisk(tmp_path / "small", "4m").start()
    try:
        yield d
    finally:
        d.stop()


def test_a_disk_that_fills_sheds_samples_and_detection_goes_on(
    tmp_path: Path, disk: SmallDisk, victoria: Victoria
) -> None:
    victoria.stop()  # the database is down: every sample must go to the spool
    port = free_port()
    site_path = sim_site(tmp_path, disk, victoria, port)
    sim = SimulatorThread(load_site(site_path), mqtt=False).start()
    disk.fill(leave=160 * 1024)  # the spool fills the rest within seconds
    daemon = Daemon(disk, site_path, tmp_path / "state", tmp_path / "gateway.log", port)
    try:
        # the start compares the spool's bound (512 MiB by default) with its disk, and says so
        wait_until(
            lambda: daemon.alive() and any("spool.max_bytes is more than" in ln for ln in daemon.lines()),
            30,
            what="the warning about the spool's bound and its disk",
        )
        m = daemon.wait_metrics(
            lambda m: m.get(SHED_FULL, 0) > 0 and m[FAILING] == 1, 90, "the sink shedding on the full disk"
        )
        status, ready = daemon.readyz()
        assert status == 503 and "disk is full" in ready["checks"]["storage"], ready

        # the rules still get every reading: an outage while the disk is full becomes an incident
        sim.world.cut_power("B2")
        wait_until(
            lambda: daemon.alive() and daemon.open_incidents(), 90, what="an incident for B2's power cut"
        )
        published = m[PUBLISHED]
        wait_until(
            lambda: daemon.metrics()[PUBLISHED] > published + 100, 60, what="the bus to keep publishing"
        )
        shed_before = daemon.metrics()[SHED_FULL]
        wait_until(lambda: daemon.metrics()[SHED_FULL] > shed_before, 30, what="more samples shed")

        code = daemon.terminate(stop_timeout())
    finally:
        daemon.kill()
        sim.stop()
    lines = daemon.lines()
    assert code == 0, daemon.dump()
    errors = [ln for ln in lines if SPOOL_ERROR in ln]
    assert len(errors) == 1, daemon.dump()  # the first error, once, as it came
    assert "disk is full" in errors[0] or "SQLITE_FULL" in errors[0], errors[0]
    assert not any("cannot rollback" in ln or "Traceback" in ln for ln in lines), daemon.dump()
    assert any('msg="meterwatch stopped"' in ln for ln in lines), daemon.dump()


_BACKLOG = """
import sys, time
from pathlib import Path
from gateway.config import load_site
from gateway.core.types import Sample
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Spool
from gateway.sink.spool import Spool
site = load_site(Path(sys.argv[1]))
enc = LineEncoder(site)
sp = Spool(Path(sys.argv[2]), max_bytes=10**9, max_age=1e9)
t0, n = float(sys.argv[3]), int(sys.argv[4])
sp.append([enc.encode(Sample("T-sdm630", t0 + i, {"voltage_l1": 230.0 + i / 100})) for i in range(n)])
sp.close()
"""


def backlog_samples(t0: float, n: int) -> list[Sample]:
    return [Sample("T-sdm630", t0 + i, {"voltage_l1": 230.0 + i / 100}) for i in range(n)]


def test_a_restart_on_a_full_disk_runs_and_keeps_the_backlog_for_when_there_is_room(
    tmp_path: Path, disk: SmallDisk, victoria: Victoria
) -> None:
    victoria.stop()
    port = free_port()
    site_path = sim_site(tmp_path, disk, victoria, port)
    site: Site = load_site(site_path)
    t0, n = 1_700_000_000.0, 300
    # a backlog acknowledged by an earlier run (the real Spool, on the small disk), then the disk fills up
    disk.python(_BACKLOG, str(site_path), str(disk.mountpoint / "spool.sqlite"), str(t0), str(n))
    disk.fill()
    assert disk.free() < 64 * 1024
    sim = SimulatorThread(site, mqtt=False).start()
    daemon = Daemon(disk, site_path, tmp_path / "state", tmp_path / "gateway.log", port)
    try:
        m = daemon.wait_metrics(
            lambda m: m[FAILING] == 1 and m.get(SHED_FULL, 0) > 0, 90, "the daemon running, shedding"
        )
        status, ready = daemon.readyz()
        assert status == 503 and ready["checks"]["started"] and "disk is full" in ready["checks"]["storage"]
        wait_until(
            lambda: daemon.metrics()[PUBLISHED] > m[PUBLISHED] + 100, 60, what="detection fed meanwhile"
        )
        assert [f for f in disk.listing() if "corrupt" in f] == []  # the healthy spool stays where it is

        disk.unfill()
        victoria.start()
        wait_until(lambda: daemon.metrics()[FAILING] == 0, 60, what="the spool storing again")
        wait_until(lambda: daemon.readyz()[0] == 200, 30, what="/readyz ready again")
        want = expected_points(backlog_samples(t0, n), LineEncoder(site))
        wait_until(
            lambda: not differences(victoria.stored('{device="T-sdm630"}')[0], want),
            90,
            what="the backlog in VictoriaMetrics",
        )
        code = daemon.terminate(stop_timeout())
    finally:
        daemon.kill()
        sim.stop()
    lines = daemon.lines()
    assert code == 0, daemon.dump()
    assert not any("Traceback" in ln or "corrupt" in ln for ln in lines), daemon.dump()
    assert len([ln for ln in lines if SPOOL_ERROR in ln]) == 1, daemon.dump()
    assert any('msg="spool stores samples again"' in ln for ln in lines), daemon.dump()
    assert m["meterwatch_spool_quarantined_total{}"] == 0


_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")  # the spool's write lock, held until stdin closes
print("locked", flush=True)
sys.stdin.read()
"""

STALL_SITE = """\
site: {{id: stall}}
buildings: [{{id: B1}}]
lines: [{{id: l1, transport: tcp, host: 127.0.0.1, port: {modbus}}}]
devices:
  - {{id: M1, building: B1, line: l1, unit: 1, profile: sdm630}}
influx: {{url: "http://127.0.0.1:{influx}", batch_size: 1000, flush_interval: 50ms}}
http: {{host: 127.0.0.1, port: 0}}
"""


async def test_a_stalled_spool_sheds_after_a_bounded_wait_and_the_rules_get_every_event(
    tmp_path: Path,
) -> None:
    """The other way storage stops: the spool's file locked by another process (an sqlite3 shell, a
    backup), so every append waits SQLite's busy timeout and then fails. The daemon's real parts
    (build_runtime + serve: bus, sink, detection) with nothing listening for InfluxDB: 30,000 samples
    published as fast as the bus takes them (more than the sink's queue holds) all reach the rules'
    queue, the sink sheds what it cannot take (queue_full, storage_error), and every sample is
    accounted for: stored or shed, by reason."""
    site_path = tmp_path / "site.yaml"
    site_path.write_text(STALL_SITE.format(modbus=free_port(), influx=free_port()), encoding="utf-8")
    rt = build_runtime(load_site(site_path), tmp_path / "state")
    fw = rt.services.sink
    assert fw is not None and isinstance(fw.buffer, Spool)
    locker = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(fw.buffer.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(rt, stop))
    n = 30_000
    try:

        async def publish() -> None:
            for i in range(n):
                await rt.bus.publish(Sample("M1", 1_700_000_000.0 + i, {"voltage_l1": float(i)}))

        try:
            await asyncio.wait_for(publish(), timeout=120)
        except TimeoutError:
            pytest.fail(f"the bus was held: {rt.bus.published} of {n} samples published in 120 s")
        [rules] = [s for s in rt.bus.subscriptions if s.name == "rules"]
        assert rules.dropped == 0 and rules.delivered >= n  # every sample reached the rules
        assert fw.sub.dropped > 0  # the sink's queue shed after its bounded wait
        await eventually(lambda: fw.storage.shed["storage_error"] > 0, 60, "the locked spool's batch shed")
        assert not fw.accepting

        locker.stdin.close()  # type: ignore[union-attr]
        locker.wait(timeout=30)
        await eventually(lambda: fw.sub.queue.empty() and fw.accepting, 120, "the spool storing again")
        # every event reached the sink's queue or was shed there; every sample the sink took was stored
        # or shed; both counted
        assert fw.sub.delivered + fw.sub.dropped == rt.bus.published == rules.delivered
        shed = sum(fw.storage.shed.values())
        assert fw.stats.samples_in == fw.stats.points_in + shed, (fw.stats, dict(fw.storage.shed))
        assert fw.buffer.stats.points == fw.stats.points_in  # what was stored is still there (no InfluxDB)
    finally:
        if locker.poll() is None:
            locker.kill()
        stop.set()
        await asyncio.wait_for(daemon, timeout=stop_timeout())
