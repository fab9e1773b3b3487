"""Issue #8 item 6: a second `meterwatch run` on the same state dir refuses to start, naming the first one's
PID, and leaves the first running; the lock goes with the first process, however it ends (SIGTERM or
SIGKILL), so the next run starts. The daemons are real subprocesses; nothing needs to answer them (the
site's meters are simply absent)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.fixtures.sim import write_sim_site
from tests.helpers import REPO
from tests.procwatch import Watched

STARTED = 'msg="meterwatch starting"'


def site_file(tmp_path: Path) -> Path:
    site = write_sim_site(tmp_path)
    site.write_text(
        site.read_text(encoding="utf-8") + "\nhttp: {host: 127.0.0.1, port: 0}\n", encoding="utf-8"
    )
    return site


def start(site: Path, state: Path, cwd: Path) -> Watched:
    run = Watched("gateway.cli", ["run", str(site), "--state-dir", str(state)], cwd=cwd)
    run.wait_for(
        lambda lines: any(STARTED in ln for ln in lines), timeout=60, what="the daemon started", which="err"
    )
    return run


def test_a_second_run_on_the_same_state_dir_refuses_naming_the_first(tmp_path: Path) -> None:
    site = site_file(tmp_path)
    state = tmp_path / "state"
    first = start(site, state, tmp_path)
    runs = [first]
    try:
        # the same dir under another name: the lock is on the file, not on the path's spelling
        (tmp_path / "alias").symlink_to(state)
        second = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(tmp_path / "alias")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        err = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 1, second.stderr
        assert len(err) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"PID {first.proc.pid}" in err[0] and "state dir" in err[0], err[0]
        assert first.proc.poll() is None  # the first one goes on

        first.proc.send_signal(signal.SIGKILL)  # even a killed daemon lets go of the lock
        first.proc.wait(timeout=30)
        runs.append(third := start(site, state, tmp_path))
        assert third.stop(signal.SIGTERM) == 0, third.dump()
        runs.append(fourth := start(site, state, tmp_path))  # and after a clean stop
        assert fourth.stop(signal.SIGTERM) == 0, fourth.dump()
    finally:
        for run in runs:
            run.kill()
