"""Issue #8 item 11: an influx.url with a path (http://host:8428/api/v2/write).

- `meterwatch check` refuses it, at the file's line, saying what to write instead;
- a site file that got past an older check: VictoriaMetrics answers every write with 400 "unsupported path
  requested", which is the URL's fault, not the points'. The points stay in the spool (nothing goes to the
  dead-letter file), the error is logged once, and after the URL is fixed they all arrive;
- `meterwatch deadletter replay SITE` sends dead letters back once the cause is fixed, says how many, and
  keeps those refused again (a line VictoriaMetrics refuses for good: longer than its 256 KiB line limit)
  and everything while the database does not answer.
All against a real VictoriaMetrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app.daemon import build_runtime
from gateway.config import load_site
from gateway.core.types import Sample
from gateway.sink.deadletter import DeadLetter, DeadLetters
from gateway.sink.lineproto import LineEncoder
from tests.fixtures.victoria import Victoria, differences, expected_points
from tests.helpers import REPO, eventually

SITE = """\
site: {{id: dl}}
buildings: [{{id: B1}}]
lines: [{{id: l1, transport: tcp, host: 127.0.0.1, port: 1502}}]
devices:
  - {{id: M1, building: B1, line: l1, unit: 1, profile: sdm630}}
influx:
  url: "{url}"
  batch_size: 16
  flush_interval: 50ms
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def samples(n: int, start: float = 1_700_000_000.0) -> list[Sample]:
    return [Sample("M1", start + i, {"voltage_l1": 230.0 + i / 10}) for i in range(n)]


def test_check_rejects_an_influx_url_with_a_path(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(url="http://127.0.0.1:8428/api/v2/write"), encoding="utf-8")
    line = 1 + site.read_text(encoding="utf-8").splitlines().index(
        '  url: "http://127.0.0.1:8428/api/v2/write"'
    )
    done = cli("check", str(site))
    assert done.returncode == 1, done.stdout + done.stderr
    where = f"{site}:{line}: influx.url:"
    [err] = [ln for ln in done.stderr.splitlines() if ln.startswith(where)]
    assert "without a path" in err and "write http://127.0.0.1:8428 " in err, err


async def test_a_url_with_a_path_keeps_the_points_and_logs_once(
    tmp_path: Path, victoria: Victoria, caplog: pytest.LogCaptureFixture
) -> None:
    site_path = tmp_path / "site.yaml"
    site_path.write_text(SITE.format(url=victoria.url), encoding="utf-8")
    site = load_site(site_path)
    influx = site.config.influx
    assert influx is not None
    # as a site file checked before check refused paths would have it
    site.config.influx = influx.model_copy(update={"url": f"{victoria.url}/api/v2/write"})
    rt = build_runtime(site, tmp_path / "state")
    wrong = rt.services.sink
    assert wrong is not None
    stop = asyncio.Event()
    task = asyncio.create_task(wrong.run(stop))
    sent = samples(50)
    caplog.set_level(logging.INFO, logger="meterwatch.sink")
    try:
        for s in sent:
            await rt.bus.publish(s)
        # three refused writes (backoff 1 s, 2 s): enough to see that the log says it once
        await eventually(lambda: wrong.stats.write_errors["config"] >= 3, 30, "the wrong endpoint, thrice")
        assert wrong.stats.config_error == 400
        assert wrong.buffer.stats.points == 50 and wrong.dead.counts.total() == 0
        assert not (tmp_path / "state" / "deadletter.jsonl").exists()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    said = [r for r in caplog.records if r.name == "meterwatch.sink" and r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "influx section" in said[0].getMessage()
    assert "unsupported path" in said[0].fields["error"]  # type: ignore[attr-defined]

    # the operator fixes the URL and restarts: the spool's points all arrive
    rt = build_runtime(load_site(site_path), tmp_path / "state")
    fixed = rt.services.sink
    assert fixed is not None
    stop = asyncio.Event()
    task = asyncio.create_task(fixed.run(stop))
    want = expected_points(sent, LineEncoder(site))
    try:
        await eventually(lambda: fixed.buffer.stats.points == 0, 60, "the spool to drain")
        await eventually(lambda: not differences(victoria.stored('{device="M1"}')[0], want), 30, "the points")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_replay_sends_dead_letters_back_and_keeps_those_refused_again(
    tmp_path: Path, victoria: Victoria
) -> None:
    site_path = tmp_path / "site.yaml"
    site_path.write_text(SITE.format(url=victoria.url), encoding="utf-8")
    enc = LineEncoder(load_site(site_path))
    state = tmp_path / "state"
    dead = state / "deadletter.jsonl"
    sent = samples(32)
    giant = "power,device=M1 " + ",".join(f"f{i}=1" for i in range(40_000)) + " 1700000000000000000"
    assert len(giant) > 256 * 1024  # past VictoriaMetrics' line limit: refused for good
    letters = [DeadLetter(str(enc.encode(s)), 400, "unsupported path requested", "rejected") for s in sent]
    # what the daemon's forwarder wrote while influx.url was wrong. The giant line comes last, alone in
    # the third batch of 16: VictoriaMetrics refuses a too long line only when it is a request's whole body
    # (with other lines it answers 204 and skips it)
    DeadLetters(dead).add([*letters, DeadLetter(giant, 400, "unsupported path requested")])

    victoria.stop()  # not fixed yet: nothing is sent, nothing is lost
    done = cli("deadletter", "replay", str(site_path), "--state-dir", str(state))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sent 0 of 33" in done.stdout and "stopped:" in done.stderr and "33 not sent" in done.stderr
    assert sorted(str(r["line"]) for r in records(dead)) == sorted([*(d.line for d in letters), giant])

    victoria.start()
    done = cli("deadletter", "replay", str(site_path), "--state-dir", str(state))
    assert done.returncode == 1, done.stdout + done.stderr  # one is kept
    assert f"sent 32 of 33 dead letters to {victoria.url}" in done.stdout, done.stdout
    assert "1 refused again" in done.stderr and str(dead) in done.stderr, done.stderr
    [kept] = records(dead)
    assert kept["line"] == giant and kept["status"] == 400 and "too long line" in str(kept["reason"])
    got, _ = victoria.stored('{device="M1"}')
    assert differences(got, expected_points(sent, enc)) == []
    assert not dead.with_name(dead.name + ".replay").exists()
