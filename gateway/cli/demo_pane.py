"""The demo's message pane: every notice the local receiver got and every command the demo ran, in order.

On a terminal the live view draws the last lines that fit under the readings (LiveView.pane); in plain mode
(a pipe, a CI log) each line is printed as it comes, prefixed so a reader (or a test) can pick them out:

    notice: 10:03:21 oncall-team <- [dispatch] #3 power outage: Building 1 | On-call team: please go ...
    demo: 10:03:26 acknowledging incident 3 as the on-call engineer (wang): meterwatch ack 3 --url ...
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.cli.demo_receiver import Notice

KEEP = 200  # lines kept for the screen; the plain output has them all anyway


@dataclass(frozen=True, slots=True)
class PaneLine:
    clock: str  # HH:MM:SS, the site's time
    kind: str  # "notice" (from the receiver) or "demo" (what the demo did)
    text: str

    @property
    def screen(self) -> str:
        """As the live view's pane shows it."""
        return f"{self.clock} {self.text}" if self.kind == "notice" else f"{self.clock} demo: {self.text}"

    @property
    def plain(self) -> str:
        """As the plain output prints it: the kind first."""
        return f"{self.kind}: {self.clock} {self.text}"


@dataclass
class MessagePane:
    tz: ZoneInfo
    title: str = "messages"
    plain: bool = False
    lines: deque[PaneLine] = field(default_factory=lambda: deque(maxlen=KEEP))
    total: int = 0

    def clock(self, at: float) -> str:
        return datetime.fromtimestamp(at, self.tz).strftime("%H:%M:%S")

    def notice(self, n: Notice) -> None:
        first = n.first_line
        title = n.title or first
        rest = f" | {first}" if first and first != title else ""
        self._add(PaneLine(self.clock(n.at), "notice", f"{n.channel:<11} <- {title}{rest}"))
        if n.links:  # the dispatch's acknowledge and on-site links: they open in a browser here too
            self._add(PaneLine(self.clock(n.at), "notice", f"{'':<11}    links: {' '.join(n.links)}"))

    def demo(self, text: str, at: float) -> None:
        self._add(PaneLine(self.clock(at), "demo", text))

    def _add(self, line: PaneLine) -> None:
        self.total += 1
        self.lines.append(line)
        if self.plain:
            print(line.plain, flush=True)

    def recent(self, n: int) -> list[PaneLine]:
        return list(self.lines)[-n:] if n > 0 else []
