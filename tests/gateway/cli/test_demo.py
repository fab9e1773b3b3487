"""`make demo` as a new user sees it: the example site served, polled and shown live within 10 s.

The demo runs as a subprocess (`python -m gateway.cli.demo --plain`) on a copy of
deploy/examples/compound.yaml
whose ports and pseudo-terminal path are moved to free ones, so it can run beside other tests.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, free_port
from tests.procwatch import Watched

EXAMPLE = REPO / "deploy/examples/compound.yaml"
BLOCK = re.compile(r"^--- \d\d:\d\d:\d\d live readings$")


def example_on_free_ports(directory: Path) -> tuple[Path, list[str]]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for line in doc["lines"]:
        if line["transport"] == "rtu":
            line["device"] = str(directory / f"tty-{line['id']}")
        else:
            line["port"] = free_port()
    doc["mqtt"]["port"] = free_port()
    doc["http"] = {"port": 0}
    path = directory / "compound.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, [d["id"] for d in doc["devices"]]


def readings_blocks(lines: list[str]) -> list[dict[str, str]]:
    """Each complete `--- HH:MM:SS live readings` block as device -> the rest of its line."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in lines:
        if BLOCK.match(line):
            current = {}
            blocks.append(current)
        elif current is not None and line and not line.startswith("demo:"):
            device, _, rest = line.partition(" ")
            current[device] = rest.strip()
        else:
            current = None
    return blocks


def all_up_with_values(devices: list[str]) -> Any:
    def check(lines: list[str]) -> bool:
        for block in readings_blocks(lines):
            if set(block) >= set(devices) and all(
                block[d].startswith("up ") and "=" in block[d].split("age=", 1)[1] for d in devices
            ):
                return True
        return False

    return check


def test_demo_shows_every_device_up_within_10s_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    site, devices = example_on_free_ports(tmp_path)
    demo = Watched("gateway.cli.demo", [str(site), "--plain"], cwd=tmp_path)
    try:
        # The clock starts at the demo's first line (interpreter start-up is not the demo's to spend, and
        # it varies with the load of a shared test machine); from there the user must see readings in 10 s.
        started = demo.wait_for(
            lambda lines: any(ln.startswith("demo: ") for ln in lines), 60, "the demo's first line", "out"
        )
        seen = demo.wait_for(all_up_with_values(devices), 12, "a readings block with every device up", "out")
        assert seen - started <= 10.0, demo.dump()
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
