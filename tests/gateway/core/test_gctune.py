"""GC tuning (gateway/core/gctune.py): METERWATCH_GC parsing, what each mode does to the collector, the pause
counters, and the daemon applying it once started. Modes are applied in child processes: freezing the
test process's objects would keep earlier tests' garbage alive."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.core.gctune import PYTHON_THRESHOLDS, TUNED_THRESHOLDS, GcSettings, settings_from_env
from tests.fixtures.sim import write_sim_site
from tests.helpers import REPO
from tests.procwatch import Watched


def test_settings_from_env() -> None:
    assert settings_from_env({}) == GcSettings("tuned", TUNED_THRESHOLDS)
    assert settings_from_env({"METERWATCH_GC": " Tuned "}) == GcSettings("tuned", TUNED_THRESHOLDS)
    assert settings_from_env({"METERWATCH_GC": "default"}) == GcSettings("default", PYTHON_THRESHOLDS)
    assert settings_from_env({"METERWATCH_GC": "off"}).mode == "off"
    assert settings_from_env({"METERWATCH_GC": "50000,20,5"}) == GcSettings("tuned", (50000, 20, 5))


@pytest.mark.parametrize(
    "bad", ["on", "tuned,1", "1,2", "0,10,10", "-5,10,10", "a,b,c", "1e4,10,10", "99999999,1,1"]
)
def test_a_bad_setting_says_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        settings_from_env({"METERWATCH_GC": bad})
    text = str(caught.value)
    assert f"METERWATCH_GC={bad!r}" in text and "tuned" in text and "20000,10,10" in text


CHILD = textwrap.dedent(
    """
    import gc, json, sys
    from gateway.core import gctune
    keep = [[i] for i in range(50_000)]  # start-up objects
    before = gc.get_freeze_count()
    gctune.apply(gctune.settings_from_env())
    cycle = []
    cycle.append(cycle)
    del cycle
    gc.collect()  # a full collection: counted, and the start-up objects are no longer walked
    p = gctune.PAUSES
    print(json.dumps({
        "enabled": gc.isenabled(), "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count() - before,
        "gen2": p.gen2_collections, "per_gen": p.collections, "longest": p.longest_pause_seconds,
        "gen2_longest": p.gen2_longest_pause_seconds, "total": p.pause_seconds_total,
        "collected": p.collected_total,
    }))
    """
)


def run_child(mode: str) -> dict[str, object]:
    import json
    import os

    env = dict(os.environ, METERWATCH_GC=mode)
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_tuned_freezes_start_up_and_raises_the_young_threshold() -> None:
    tuned = run_child("tuned")
    assert tuned["enabled"] is True and tuple(tuned["threshold"]) == TUNED_THRESHOLDS  # type: ignore[arg-type]
    assert tuned["frozen"] >= 50_000  # type: ignore[operator]
    assert tuned["gen2"] == 2  # apply()'s own collect and the child's
    assert tuned["collected"] >= 1  # the cycle
    assert 0 < tuned["gen2_longest"] <= tuned["longest"] <= tuned["total"]  # type: ignore[operator]


def test_default_and_off_leave_or_stop_the_collector() -> None:
    default = run_child("default")
    assert default["enabled"] is True and tuple(default["threshold"]) == PYTHON_THRESHOLDS  # type: ignore[arg-type]
    assert default["frozen"] == 0 and default["gen2"] == 1
    off = run_child("off")
    assert off["enabled"] is False and off["frozen"] == 0 and off["gen2"] == 1  # explicit collect still works


def daemon_site(tmp_path: Path) -> Path:
    site = write_sim_site(tmp_path)
    site.write_text(
        site.read_text(encoding="utf-8") + "\nhttp: {host: 127.0.0.1, port: 0}\n", encoding="utf-8"
    )
    return site


def test_the_daemon_tunes_once_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERWATCH_GC", "tuned")
    run = Watched(
        "gateway.cli", ["run", str(daemon_site(tmp_path)), "--state-dir", str(tmp_path / "s")], cwd=tmp_path
    )
    try:
        run.wait_for(
            lambda lines: any("garbage collector set" in ln for ln in lines),
            timeout=60,
            what="gc set",
            which="err",
        )
        lines = run.lines("err")
        started = next(i for i, ln in enumerate(lines) if "meterwatch starting" in ln)
        tuned = next(i for i, ln in enumerate(lines) if "garbage collector set" in ln)
        assert tuned > started and "tuned: start-up objects frozen" in lines[tuned], lines[tuned]
        assert run.stop(signal.SIGTERM) == 0, run.dump()
        pauses = [ln for ln in run.lines("err") if "garbage collector pauses" in ln]
        assert len(pauses) == 1 and "gc_collections_gen2=" in pauses[0], run.dump()
    finally:
        run.kill()


def test_the_daemon_refuses_a_bad_setting_before_starting(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, METERWATCH_GC="fast")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            str(daemon_site(tmp_path)),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "METERWATCH_GC='fast' is not a garbage-collector setting" in done.stderr
    assert "meterwatch starting" not in done.stderr and "Traceback" not in done.stderr


async def test_build_runtime_adds_the_tuning_last_only_when_asked(tmp_path: Path) -> None:
    """One place decides where the tuning goes (build_runtime): after every other component, so that what
    their first steps built is frozen; without settings the collector is left alone (tests, the demo)."""
    from gateway.app.daemon import build_runtime
    from gateway.config import load_site
    from gateway.core import gctune

    site = load_site(daemon_site(tmp_path))
    settings = GcSettings("tuned", (5000, 10, 10))
    tuned = build_runtime(site, tmp_path / "a", tune_gc=settings)
    last = tuned.components[-1]
    assert isinstance(last, gctune.AfterStart) and last.settings == settings
    assert sum(isinstance(c, gctune.AfterStart) for c in tuned.components) == 1
    plain = build_runtime(site, tmp_path / "b")
    assert not any(isinstance(c, gctune.AfterStart) for c in plain.components)
    assert [c.name for c in tuned.components[:-1]] == [c.name for c in plain.components]
