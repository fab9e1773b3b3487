"""The fleet view's side of acknowledging from afar (issue 13, item 2), with `--command-key`: a command asked
for on the page or /api/commands is checked against what the view knows (an open incident of that gateway),
signed with the view's Ed25519 key (gateway/fleet/command_format.py) and published at QoS 1 on the gateway's
command topic. Its `who` is the name of the token its sender proved (gateway/fleetview/page.py checks it,
gateway/fleetview/tokens.py reads them), so the gateway's timeline says who acted: "by wang via fleet".
The gateway answers on its events topic (type `command`); the first answer to a command is its outcome here
(a later copy, e.g. `replayed` for a redelivery, does not change it).

Only the commands this view sent are followed, the latest MAX_KEPT of them: the view keeps no state that
matters (the gateway's incident and its timeline say what was done).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTMessageInfo

from gateway.fleet.command_format import ACTIONS, MAX_TEXT, MAX_WHO, Command, new_command, sign
from gateway.fleet.topics import Topics

log = logging.getLogger("meterwatch.fleetview")

TTL = 120  # s a command stays valid (its `expires`); a gateway's own max_age may be shorter
MAX_KEPT = 200
PUBACK_WAIT = 5.0  # s the request waits for the broker to take the command


class Publisher(Protocol):
    """The view's MQTT client (gateway/fleetview/client.py)."""

    connected: threading.Event

    def publish(self, topic: str, payload: bytes) -> MQTTMessageInfo: ...


class CommandError(Exception):
    """A command refused by the view before it was signed: HTTP status and what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Sent:
    command: Command  # what was signed: its id, where to, what, by whom
    issued_at: float  # the view's clock when sent (the command's own issued_at is whole seconds)
    state: str = "sending"  # sending -> sent (the broker took it) -> accepted | rejected
    code: str | None = None
    reason: str | None = None
    answered_at: float | None = None

    @property
    def id(self) -> str:
        return self.command.id

    def as_dict(self) -> dict[str, Any]:
        """What the page and /api/commands show: the command's fields but its validity, then the outcome."""
        out = asdict(self)
        cmd = out.pop("command")
        del cmd["issued_at"], cmd["expires"]
        return {**cmd, **out}


class CommandDesk:
    """Signs, publishes and follows commands; `snapshot` is the view's state (to find the incident)."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        publisher: Publisher,
        snapshot: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.publisher = publisher
        self.snapshot = snapshot
        self.clock = clock
        self._sent: collections.OrderedDict[str, Sent] = collections.OrderedDict()
        self._lock = threading.Lock()

    def send(
        self, company: str, site: str, gateway: str, incident: int, action: str, who: str, text: str = ""
    ) -> Sent:
        """Check, sign and publish; waits (at most PUBACK_WAIT) for the broker to take it. CommandError when
        refused (nothing is sent then)."""
        who, text = who.strip(), text.strip()
        if action not in ACTIONS:
            raise CommandError(400, f"action: {action[:40]!r}, expected one of {', '.join(ACTIONS)}")
        if not who or len(who) > MAX_WHO or not who.isprintable():
            raise CommandError(400, f"who: expected your name, 1 to {MAX_WHO} printable characters")
        if action == "note" and not text:
            raise CommandError(400, "text: a note needs its words")
        if len(text) > MAX_TEXT:
            raise CommandError(400, f"text: at most {MAX_TEXT} characters")
        if not self._known(company, site, gateway, incident):
            raise CommandError(
                404, f"no open incident {gateway}/{incident} at {company}/{site} is known to this view"
            )
        if not self.publisher.connected.is_set():
            raise CommandError(503, "not connected to the broker: nothing was sent, try again")
        now = self.clock()
        cmd = new_command(company, site, gateway, action, incident, who, text, now, TTL)
        sent = Sent(cmd, now)
        with self._lock:
            self._sent[cmd.id] = sent
            while len(self._sent) > MAX_KEPT:
                self._sent.popitem(last=False)
        info = self.publisher.publish(Topics(company, site, gateway).command, sign(cmd, self.key))
        try:
            info.wait_for_publish(PUBACK_WAIT)
        except (RuntimeError, ValueError) as exc:  # paho could not queue it (the connection just went)
            with self._lock:
                self._sent.pop(cmd.id, None)
            raise CommandError(503, f"the broker did not take the command ({exc}); try again") from None
        with self._lock:
            if info.is_published() and sent.state == "sending":
                sent.state = "sent"
        log.info(
            "fleet command sent",
            extra={"fields": {"command": cmd.id, "action": action, "incident": f"{gateway}/{incident}"}},
        )
        return sent

    def _known(self, company: str, site: str, gateway: str, incident: int) -> bool:
        for s in self.snapshot()["sites"]:
            if s["company"] == company and s["site"] == site:
                return any(i["gateway"] == gateway and i["id"] == incident for i in s["incidents"])
        return False

    def on_event(self, topic: str, payload: bytes) -> None:
        """A message on an events/ topic (paho's thread): the outcome of a command this view sent."""
        if b'"command"' not in payload:
            return  # incidents and notices: not ours to read
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("type") != "command":
            return
        cid = body.get("command")
        with self._lock:
            sent = self._sent.get(cid) if isinstance(cid, str) else None
            if sent is None or sent.state in ("accepted", "rejected"):
                return  # another view's command, or a later copy of an answer already had
            outcome = body.get("outcome")
            sent.state = "accepted" if outcome == "accepted" else "rejected"
            code, reason = body.get("code"), body.get("reason")
            sent.code = code if isinstance(code, str) else None
            sent.reason = reason if isinstance(reason, str) else None
            sent.answered_at = self.clock()

    def get(self, cid: str) -> dict[str, Any] | None:
        with self._lock:
            sent = self._sent.get(cid)
            return None if sent is None else sent.as_dict()

    def recent(self, n: int = MAX_KEPT) -> list[dict[str, Any]]:
        """The latest first."""
        with self._lock:
            return [s.as_dict() for s in reversed(self._sent.values())][:n]
