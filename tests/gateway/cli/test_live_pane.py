"""The demo's messages pane in the live view: on an 80x24 terminal the whole screen fits (every device row,
the open incidents, the footer, the newest messages), each message on one row; a taller terminal shows more
of them; in plain mode every message is printed at once as a `notice:` or `demo:` line.

The screen is rendered by rich itself (Console(record=True) at the terminal's size); the messages are the
receiver's own parse of what apprise posts (json:// bodies with the X-Meterwatch-Key header).
"""

from __future__ import annotations

import io
import json
import re
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from gateway.cli.demo_pane import MessagePane
from gateway.cli.demo_receiver import Notice, parse_notice
from gateway.cli.live import LiveView
from tests.gateway.cli.test_live_view import NOW, OpenIncidents, outage, the_site_running

TZ = ZoneInfo("Asia/Shanghai")


def notice(i: int, channel: str = "staff", stage: str = "staff_open") -> Notice:
    body = json.dumps(
        {"title": f"[critical] #{i} power outage: Building 1", "message": f"Dear all,\nmessage {i} says this"}
    ).encode()
    key = f"incident:{i}/{stage}/{channel}/{channel}"
    return parse_notice(f"/{channel}", {"X-Meterwatch-Key": key}, body, NOW + i)


def screen(view: LiveView, width: int, height: int) -> list[str]:
    console = Console(record=True, width=width, height=height, file=io.StringIO())
    console.print(view.render(NOW))
    return console.export_text().splitlines()


def busy_view(messages: int) -> LiveView:
    view = the_site_running()
    second = outage()
    second.id, second.title = 8, "communication fault: device B2-shop"
    view.incidents = OpenIncidents([outage(), second])
    view.footer = lambda: "scenario +52s · next: +100s restore B2-shop"
    view.pane = pane = MessagePane(TZ, title="messages (receiver http://127.0.0.1:40905)")
    for i in range(1, messages + 1):
        pane.notice(notice(i))
    pane.demo("acknowledging incident 7 as the on-call engineer (wang): meterwatch ack 7 --url http://x", NOW)
    return view


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 40)])
def test_the_whole_screen_fits_the_terminal(width: int, height: int) -> None:
    view = busy_view(20)
    lines = screen(view, width, height)
    assert len(lines) < height, "\n".join(lines)  # one row is the cursor's
    assert all(len(ln) <= width for ln in lines), "\n".join(lines)
    firsts = [ln.split(" ", 1)[0] for ln in lines]
    assert all(firsts.count(d) == 1 for d in view.views), "\n".join(lines)  # every device, one row each
    text = "\n".join(lines)
    assert "#7 firing" in text and "#8 firing" in text and "scenario +52s" in text, text
    header = next(ln for ln in lines if ln.startswith("messages (receiver"))
    shown = int(re.search(r"last (\d+) of 21", header).group(1))  # type: ignore[union-attr]
    pane_rows = lines[lines.index(header) + 1 :][:shown]
    assert shown >= 3 and len(pane_rows) == shown, text
    # the newest messages, oldest first, each on one row: the demo's own action last
    assert "demo: acknowledging incident 7 as the on-call engineer (wang)" in pane_rows[-1], text
    assert all(re.match(r"^\d\d:\d\d:\d\d ", row) for row in pane_rows), text
    numbers = [int(m.group(1)) for row in pane_rows if (m := re.search(r"\] #(\d+) power", row))]
    assert numbers == list(range(22 - shown, 21)), (numbers, text)  # the last row is the demo's


def test_a_taller_terminal_shows_more_messages() -> None:
    def shown(height: int) -> int:
        lines = screen(busy_view(20), 120, height)
        header = next(ln for ln in lines if ln.startswith("messages (receiver"))
        return int(re.search(r"last (\d+) of", header).group(1))  # type: ignore[union-attr]

    assert shown(40) > shown(24) >= 3


def test_a_message_row_shows_its_time_channel_title_and_first_line() -> None:
    view = busy_view(1)
    row = next(ln for ln in screen(view, 200, 40) if "message 1 says this" in ln)
    assert row.startswith(
        "06:13:21 staff       <- [critical] #1 power outage: Building 1 | message 1 says"
    ), row


def test_plain_mode_prints_each_message_as_it_comes(capsys: pytest.CaptureFixture[str]) -> None:
    pane = MessagePane(TZ, plain=True)
    pane.notice(notice(3, "oncall-team", "dispatch"))
    pane.demo("acknowledging incident 3 as the on-call engineer (wang): meterwatch ack 3 --url http://x", NOW)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "notice: 06:13:23 oncall-team <- [critical] #3 power outage: Building 1 | message 3 says this",
        "demo: 06:13:20 acknowledging incident 3 as the on-call engineer (wang): meterwatch ack 3 --url http://x",
    ]


def test_a_dispatch_shows_its_links_on_a_row_of_their_own(capsys: pytest.CaptureFixture[str]) -> None:
    body = json.dumps(
        {
            "title": "[dispatch] #3 power outage: Building 1",
            "message": "On-call team: please go to the site now for incident #3\n"
            "Acknowledge: http://127.0.0.1:9/ack/abc.def\nOn site: http://127.0.0.1:9/on-site/ghi.jkl\n",
        }
    ).encode()
    n = parse_notice(
        "/oncall-team", {"X-Meterwatch-Key": "incident:3/dispatch/oncall/oncall-team"}, body, NOW
    )
    assert n.links == ["http://127.0.0.1:9/ack/abc.def", "http://127.0.0.1:9/on-site/ghi.jkl"]
    MessagePane(TZ, plain=True).notice(n)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "notice: 06:13:20                links: http://127.0.0.1:9/ack/abc.def http://127.0.0.1:9/on-site/ghi.jkl"
    ), out
