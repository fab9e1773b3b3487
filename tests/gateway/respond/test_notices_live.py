"""A building power cut from the simulator, through the whole daemon, to messages at a local receiver.

The live site of bench/rules_live.py (poll 0.5 s, outage `for` 2 s, `clear_for` 3 s) with a notify section:
a staff channel (Chinese) fanned out to two targets, one of which answers HTTP 500 until it is healed, and
a channel for B1's residents (English). apprise's json:// stands in for the robots. Waits on the receiver's
events with generous time-outs; nothing here is a speed claim.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.rules_live import LiveSite
from tests.fixtures.receiver import Receiver
from tests.helpers import free_port, wait_until

NOTIFY = """
notify:
  hotline: "400-800-1234"
  confirm_delay: {{power_outage: 2s}}
  verify_for: 2s
  retry_max: 1s
  channels:
    - {{name: staff, url: "{staff}, {staff_down}", audiences: [staff], language: zh}}
    - {{name: b1-residents, url: "{residents}", audiences: ["residents:B1"], language: en}}
"""


def message(r: object) -> str:
    body = r.json()  # type: ignore[attr-defined]
    return f"{body['title']}\n{body['message']}"


def test_power_cut_staff_at_once_residents_after_delay_all_clear_after_restore(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.fail("/staff-down", 500)
    notify = NOTIFY.format(
        staff=receiver.url("json", "/staff"),
        staff_down=receiver.url("json", "/staff-down"),
        residents=receiver.url("json", "/residents"),
    )
    live = LiveSite(tmp_path, http_port=free_port(), extra=notify)
    with live:
        live.sim.world.cut_power("B1")
        [staff_open] = receiver.wait_for(1, "/staff", timeout=60)
        text = message(staff_open)
        assert "B1" in text and "停电" in text, text  # Chinese, about the building that lost power

        # the failing target is tried again (and again), the good one is not sent the notice twice
        receiver.wait_for(2, "/staff-down", timeout=60)
        assert receiver.count("/staff") == 1
        receiver.heal("/staff-down")
        healed = receiver.count("/staff-down") + 1
        receiver.wait_for(healed, "/staff-down", timeout=60)
        assert receiver.count("/staff") == 1

        # residents hear once, after the confirmation delay, in English, with the hotline
        [notice] = receiver.wait_for(1, "/residents", timeout=60)
        assert notice.at > staff_open.at
        text = message(notice)
        assert "400-800-1234" in text and "B1" in text and "power" in text.lower(), text

        restored = time.monotonic()
        live.sim.world.restore_power("B1")
        residents = receiver.wait_for(2, "/residents", timeout=90)
        all_clear = message(residents[1])
        assert residents[1].at > restored
        assert "restored" in all_clear.lower() or "back" in all_clear.lower(), all_clear
        # staff hear of the resolution too; nobody is told anything twice
        wait_until(lambda: receiver.count("/staff") >= 2, timeout=60, what="the staff's resolved notice")
        assert len({r.body for r in receiver.requests("/residents")}) == receiver.count("/residents") == 2
