"""The command line a new user meets (issue 8, item 15): --version, flags shown as flags, and `check`
saying what a line's load means."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from tests.helpers import REPO


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"meterwatch {version('meterwatch')}"


def test_help_shows_flags_as_flags_not_bool() -> None:
    for args in (("replay", "--help"), ("incidents", "--help"), ("simulate", "--help"), ("oncall", "--help")):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert "<bool>" not in r.stdout, (args, r.stdout)
    assert "--mqtt / --no-mqtt" in cli("simulate", "--help").stdout


def test_check_says_what_the_load_means() -> None:
    r = cli("check", str(REPO / "deploy/examples/compound.yaml"))
    assert r.returncode == 0, r.stderr
    assert "worst case overruns" not in r.stdout
    assert "of it: fits while devices answer; when some time out, cycles overrun" in r.stdout
    assert "of it: fits, also when devices time out" in r.stdout
