"""`make demo` as a new user sees it: the example site served, polled and shown live, every device up.

The demo runs as a subprocess (`python -m gateway.cli.demo --plain`) on a copy of
deploy/examples/compound.yaml
whose ports and pseudo-terminal path are moved to free ones, so it can run beside other tests.

The test waits on what the demo prints, with generous time-outs that fail only when it never comes; how soon
the readings show (time to first readings) is measured and printed by bench/demo_start.py, not asserted.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bench.demo_start import EXAMPLE, all_up_with_values, example_on_free_ports
from tests.procwatch import Watched


def test_demo_shows_every_device_up_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    site, devices = example_on_free_ports(tmp_path)
    demo = Watched("gateway.cli.demo", [str(site), "--plain"], cwd=tmp_path)
    try:
        demo.wait_for(
            lambda lines: any(ln.startswith("demo: ") for ln in lines), 60, "the demo's first line", "out"
        )
        demo.wait_for(all_up_with_values(devices), 60, "a readings block with every device up", "out")
        code = demo.stop(signal.SIGINT)
    finally:
        demo.kill()
    assert code == 0, demo.dump()
    out = demo.lines("out")
    assert any(ln.startswith("demo: first reading") for ln in out), demo.dump()
    assert not any("Traceback" in ln for ln in demo.lines("err")), demo.dump()


def test_the_example_scenario_plays_however_the_example_path_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli.demo import DEFAULT_SCENARIO, default_scenario

    monkeypatch.chdir(EXAMPLE.parents[2])
    assert default_scenario(Path("deploy/examples/compound.yaml")) == DEFAULT_SCENARIO  # as `make demo`
    assert default_scenario(EXAMPLE) == DEFAULT_SCENARIO
    site, _ = example_on_free_ports(tmp_path)
    assert default_scenario(site) is None
