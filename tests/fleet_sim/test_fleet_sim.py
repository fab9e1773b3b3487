"""The fleet acceptance simulation (tests/fleet_sim/run.py) at a small size: 4 real gateway processes, 2
compounds with their supply cut, the broker stopped for 15 s while their incidents change (and a fault is
reported, noted and resolved by hand in the other two), keepalive 5 s.
The same checks as `make fleet-sim` (20 gateways, 5 outages, 2 minutes): the outages shown in the fleet view,
the view in step with the gateways after the broker's return, every committed event at the counting
subscriber exactly once (by id), a killed and a frozen gateway offline within 1.5 x keepalive, every
compound's readings in VictoriaMetrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet_sim.run import Options, report, simulate

CHECKS = {
    "outages shown",
    "subscriber session kept",
    "view after the broker's return",
    "SIGKILL offline",
    "SIGSTOP offline",
    "exactly once",
    "readings stored",
}


@pytest.mark.slow
def test_fleet_simulation_small(tmp_path: Path) -> None:
    opts = Options(gateways=4, outages=2, broker_stop=15.0, keepalive=5, poll=1.0, timeout=60.0)
    result = simulate(opts, tmp_path / "sim")
    text = report(result, opts)
    print(text)
    assert result.ok, f"{text}\nlogs: {tmp_path / 'sim'}"
    assert {c.name for c in result.checks} == CHECKS, text
    fig = result.figures
    assert fig["broker_down_s"] >= 15.0
    # events were produced while the broker was away and kept by the gateways until it came back
    assert all(n > 0 for n in fig["owed_at_restart"].values()), text
    assert len(fig["owed_at_restart"]) == opts.gateways, text
    assert all(e["committed"] > 0 for e in fig["events"].values()), text
    assert fig["events"]["c01"]["notices"] > 0, text  # the notice outcomes are events too
