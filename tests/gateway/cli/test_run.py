"""`meterwatch run SITE` as a user runs it: a subprocess polling the simulators, stopped by a signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.fixtures.sim import SIM_DEVICES, SimHandle
from tests.procwatch import Watched


def _devices_up(lines: list[str]) -> bool:
    up = {ln.split("device=", 1)[1].split()[0] for ln in lines if 'msg="device up"' in ln}
    return up >= {d[0] for d in SIM_DEVICES}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_polls_then_stops_cleanly_on_signal(sim: SimHandle, tmp_path: Path, sig: signal.Signals) -> None:
    site = sim.site_path
    # A free HTTP port: the default 9464 may be taken by another test or a running gateway.
    site.write_text(site.read_text() + "\nhttp: {port: 0}\n", encoding="utf-8")
    run = Watched("gateway.cli", ["run", str(site)], cwd=tmp_path)
    try:
        run.wait_for(_devices_up, timeout=60, what="every simulated device reported up", which="err")
        code = run.stop(sig)
    finally:
        run.kill()
    err = run.lines("err")
    assert code == 0, run.dump()
    assert any('msg="meterwatch stopped"' in ln for ln in err), run.dump()
    assert not any("Traceback" in ln or "level=error" in ln for ln in err), run.dump()
    assert (tmp_path / "var" / sim.site.config.site.id).is_dir()  # state where the daemon was started


def test_state_dir_option_puts_the_state_there(sim: SimHandle, tmp_path: Path) -> None:
    site = sim.site_path
    site.write_text(site.read_text() + "\nhttp: {port: 0}\n", encoding="utf-8")
    state = tmp_path / "state"
    run = Watched("gateway.cli", ["run", str(site), "--state-dir", str(state)], cwd=tmp_path)
    try:
        run.wait_for(_devices_up, timeout=60, what="every simulated device reported up", which="err")
        code = run.stop(signal.SIGTERM)
    finally:
        run.kill()
    assert code == 0, run.dump()
    assert (state / "incidents.sqlite").is_file(), sorted(p.name for p in state.iterdir())
    assert not (tmp_path / "var").exists()
