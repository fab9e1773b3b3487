"""The fleet topics and payloads, version 1 (docs/fleet-topics.md says the same for the fleet view's authors).

All topics are under `meterwatch/<company>/<site>/`:

    gateway/<gateway>                 retained, QoS 1: the gateway's state ("online"; the last will "offline")
    incident/<gateway>/<incident id>  retained, QoS 1: each open incident's current state; cleared (an empty
                                      retained payload) when it resolves or is merged, so a late viewer sees
                                      only what is open
    events/<gateway>                  QoS 1, not retained: every incident transition and every notice sent or
                                      failed, each with a unique, stable `id`
                                      (<site>/<gateway>/<epoch>-<seq>): a redelivery carries the same id
    kpi/<gateway>                     retained, QoS 1: the month-to-date handbook KPIs, daily at fleet.kpi_at
    command/<gateway>                 QoS 1, not retained: signed commands from the fleet view, when
                                      fleet.commands is enabled (gateway/fleet/commands.py)

Every payload is a JSON object with "v": 1 and "type"; times are Unix seconds (UTC). A consumer ignores
fields it does not know; a change that would break one gets a new "v".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
ROOT = "meterwatch"


@dataclass(frozen=True, slots=True)
class Topics:
    company: str
    site: str
    gateway: str

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.company}/{self.site}"

    @property
    def state(self) -> str:
        return f"{self.base}/gateway/{self.gateway}"

    def incident(self, incident_id: int) -> str:
        return f"{self.base}/incident/{self.gateway}/{incident_id}"

    @property
    def events(self) -> str:
        return f"{self.base}/events/{self.gateway}"

    @property
    def kpi(self) -> str:
        return f"{self.base}/kpi/{self.gateway}"

    @property
    def command(self) -> str:
        return f"{self.base}/command/{self.gateway}"

    def event_id(self, epoch: int, seq: int) -> str:
        """The id of the outbox row `seq` of the outbox made at `epoch` (Unix s): the same on every
        redelivery, and unique per gateway even if its incident store is ever started afresh (seq starts
        at 1 again; the epoch does not repeat)."""
        return f"{self.site}/{self.gateway}/{epoch}-{seq}"


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def with_id(payload: str, event_id: str) -> bytes:
    """The stored payload with its id added as the first field (the id comes from the outbox row's seq,
    known only once the row is written). An empty payload (a retained topic cleared) stays empty."""
    if not payload:
        return b""
    body = payload[1:]
    sep = "" if body == "}" else ","
    return ('{"id":' + json.dumps(event_id) + sep + body).encode()
