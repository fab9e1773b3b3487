"""A gateway that vanishes without a word (SIGKILL: no DISCONNECT, no offline state of its own) is marked
offline by the broker with the gateway's last will: the retained `gateway/<gateway>` message with state
"offline", within about 1.5 x the fleet keepalive (waited for on the message; the bound checked is a
generous one, this is no speed claim)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import COMPANY, Subscriber
from tests.helpers import REPO

KEEPALIVE = 5
SITE = """\
site: {{id: killtest, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
http: {{host: 127.0.0.1, port: 0}}
fleet:
  company: {company}
  broker: mqtt://{host}:{port}
  gateway: gw-kill
  keepalive: {keepalive}
"""
STATE = f"meterwatch/{COMPANY}/killtest/gateway/gw-kill"


def state(sub: Subscriber) -> str | None:
    m = sub.latest(STATE)
    return None if m is None else str(m.json()["state"])


def test_a_killed_gateway_is_marked_offline_by_its_last_will(
    tmp_path: Path, mosquitto: Mosquitto, subscriber_factory: Any
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        SITE.format(company=COMPANY, host=mosquitto.host, port=mosquitto.port, keepalive=KEEPALIVE),
        encoding="utf-8",
    )
    sub = subscriber_factory()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.fleet.child", str(site), str(tmp_path / "state")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        sub.wait(lambda: state(sub) == "online", "the gateway online", 60.0)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
        sub.wait(lambda: state(sub) == "offline", "the last will", 6 * KEEPALIVE)
        waited = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    will = sub.latest(STATE)
    assert will is not None
    body = will.json()
    assert body["v"] == 1 and body["type"] == "gateway" and body["gateway"] == "gw-kill"
    assert body["site"] == "killtest" and body["keepalive"] == KEEPALIVE
    # the broker waits 1.5 x keepalive; 3 x is a generous bound on this shared machine
    assert waited <= 3 * KEEPALIVE, f"the last will came {waited:.1f}s after the kill"
    # a late viewer sees the gateway offline (the will is retained)
    late = subscriber_factory(client_id="late-viewer", persistent=False)
    late.wait(lambda: state(late) == "offline", "the retained offline state")
    assert late.latest(STATE).retain  # type: ignore[union-attr]
