"""Tell a session takeover (another client connected with our client id) from a lost link.

Two gateways with the same client id take the broker session from each other on every reconnect: each
connect makes the broker close the other's connection, which reconnects a second later and does the same.
An MQTT 5 broker may say so (DISCONNECT with reason 0x8E "Session taken over": mosquitto sends it since
2.0.15); older ones, and every MQTT 3.1.1 broker, just close the connection. So a takeover is recognised
either by that reason code or by its pattern: the broker closing the link soon after each connect, twice in a
row. A link that then stays up for `short_link` seconds ends the episode.

Pure bookkeeping on monotonic times given by the caller; the subscriber logs, counts and reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code
NORMAL_DISCONNECTION = 0x00  # our own disconnect() (a restart of the link, a stop)
SHORT_LINK = 10.0  # seconds: a link the broker closes sooner than this after connecting is suspect
REPEATS = 2  # suspect links in a row that make a takeover


@dataclass
class TakeoverWatch:
    short_link: float = SHORT_LINK
    repeats: int = REPEATS
    active: bool = False  # a takeover episode is going on
    suspect_links: int = 0  # links in a row the broker closed soon after connecting
    connected_at: float | None = None
    said_taken_over: bool = False  # the broker said 0x8E at least once in this episode

    def connected(self, now: float) -> None:
        self.connected_at = now

    def disconnected(self, now: float, reason_code: int, from_server: bool) -> bool:
        """True when this disconnect is part of a takeover (and so no sign that the broker is gone)."""
        lasted = math.inf if self.connected_at is None else now - self.connected_at
        self.connected_at = None
        if reason_code == NORMAL_DISCONNECTION and not from_server:
            return False  # we closed it ourselves
        if reason_code == SESSION_TAKEN_OVER:
            self.said_taken_over = True
            self.suspect_links += 1
            self.active = True
            return True
        if lasted < self.short_link:
            self.suspect_links += 1
        else:
            self.suspect_links = 0
            self.active = False
        if self.suspect_links >= self.repeats:
            self.active = True
        return self.active

    def stable(self, now: float) -> bool:
        """Call while the link is up: True (once) when the link outlasted `short_link`, ending an episode."""
        if self.connected_at is None or now - self.connected_at < self.short_link:
            return False
        self.suspect_links = 0
        ended = self.active
        self.active = False
        self.said_taken_over = False
        return ended
