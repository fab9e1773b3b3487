"""The demo's stand-in for the phones and robots: a local HTTP receiver the demo's notice channels post to.

Each channel of the demo site is an apprise `json://127.0.0.1:PORT/<channel>` URL, so every notice the
gateway sends arrives here as apprise's JSON body (`{"title", "message", "type", ...}`) with the outbox key
in the X-Meterwatch-Key header (`incident:3/dispatch/oncall/oncall`). The receiver answers 200 and hands
each message, parsed, to the asyncio loop (`notices`), where the live view shows it and the demo reacts.
The server (gateway/tools/receiver.py, the benches' too) runs in its own thread so a busy loop never
stalls the gateway's sender.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from gateway.tools.receiver import LocalReceiver

KEY_HEADER = "X-Meterwatch-Key"  # as gateway/respond/sender.py sends it
_URL = re.compile(r"https?://\S+")
_KEY = re.compile(r"^incident:(?P<incident>\d+)/(?P<stage>[a-z_]+)/(?P<audience>[^/]+)")


@dataclass(frozen=True, slots=True)
class Notice:
    """One message as the receiver got it."""

    at: float  # time.time() at arrival
    channel: str  # the URL's path without the slash: the demo names each channel's path after it
    title: str
    body: str
    keys: tuple[str, ...]  # the outbox keys it carries (a digest carries several)

    @property
    def first_line(self) -> str:
        """The body's first line that says something: a salutation ("Dear residents," 尊敬的业主：) is
        skipped, as a reader's eye skips it."""
        lines = [ln.strip() for ln in self.body.splitlines() if ln.strip()]
        said = [ln for ln in lines if not ln.endswith((",", "，", ":", "："))]
        return (said or lines or [""])[0]

    @property
    def links(self) -> list[str]:
        """The addresses the message carries (a dispatch's acknowledge and on-site links)."""
        return _URL.findall(self.body)

    def parts(self) -> list[tuple[int, str, str]]:
        """(incident id, stage, audience) of each key that names an incident (maintenance notices do not)."""
        out = []
        for key in self.keys:
            m = _KEY.match(key)
            if m is not None:
                out.append((int(m["incident"]), m["stage"], m["audience"]))
        return out

    def stages(self) -> set[str]:
        return {stage for _, stage, _ in self.parts()}

    def incidents(self) -> set[int]:
        return {incident for incident, _, _ in self.parts()}


def parse_notice(path: str, headers: Mapping[str, str], body: bytes, at: float) -> Notice:
    """A request as a Notice; a body that is not apprise's JSON is shown as it came (never an error)."""
    channel = urllib.parse.unquote(path.split("?", 1)[0].strip("/")) or "-"
    raw = next((v for k, v in headers.items() if k.lower() == KEY_HEADER.lower()), "")
    keys = tuple(urllib.parse.unquote(k.strip()) for k in raw.split(",") if k.strip())
    text = body.decode("utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        return Notice(at, channel, str(doc.get("title") or ""), str(doc.get("message") or ""), keys)
    return Notice(at, channel, "", text, keys)


class DemoReceiver(LocalReceiver):
    """Answers every request with 200 and puts each, as a Notice, on `notices` (the loop's queue).

    Start it from the running loop (`start()`), stop it with `stop()`; `url(channel)` is the apprise URL
    of a channel whose messages arrive tagged with that channel's name."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(self._request, host, name="demo-receiver", poll_interval=0.1)
        self.notices: asyncio.Queue[Notice] = asyncio.Queue()
        self.received: list[Notice] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def url(self, channel: str) -> str:
        return f"json://{self.host}:{self.port}/{channel}"

    def _arrived(self, notice: Notice) -> None:  # on the loop
        self.received.append(notice)
        self.notices.put_nowait(notice)

    def _request(self, path: str, headers: Mapping[str, str], body: bytes) -> None:  # the server's thread
        notice = parse_notice(path, headers, body, time.time())
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arrived, notice)

    def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        return super().start()
