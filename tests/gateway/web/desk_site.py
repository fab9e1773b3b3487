"""A live site for the write API and the staff CLI: the real daemon (pollers, detection, desk, HTTP) on the
simulated meters of bench/rules_live.py, with named tokens, an on-call roster and a staff channel to a local
HTTP receiver (apprise json://), so the respond side (dispatch, the desk) runs as in production.

`desk_site(directory, receiver)` is a context manager yielding a `DeskSite`; `Api` sends requests the way
any client does (urllib, JSON) and returns (status, decoded body) whatever the status.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.config import load_site
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver
from tests.helpers import free_port, wait_until

# token name -> (environment variable, value): the site file names the variables, never the values
TOKENS = {
    "desk": ("MW_TEST_TOKEN_DESK", "desk-token-5b0f3a7c91d2e4"),
    "wang-phone": ("MW_TEST_TOKEN_WANG", "wang-token-8e1c6d2f07a4b9"),
}
DESK = TOKENS["desk"][1]
WANG = TOKENS["wang-phone"][1]

ROSTER = """
oncall:
  people:
    - {id: wang, name: Wang Wei, phone: "13800000001"}
    - {id: li, name: Li Na, phone: "13800000002"}
    - {id: zhao, name: Zhao Lei, phone: "13800000003"}
  shifts:
    - {oncall: wang, backup: li}
  supervisor: zhao
notify:
  hotline: "400-800-1234"
  channels:
    - {name: staff, url: "STAFF_URL", audiences: [staff, oncall, backup, supervisor, manager]}
"""


def write_desk_site(directory: Path, staff_url: str, *, tokens: bool = True, http_port: int = 0) -> Path:
    """The live site with the roster and staff channel above and (unless `tokens` is false) http.tokens."""
    path = write_live_site(
        directory,
        http_port=http_port,
        http_tokens={n: env for n, (env, _) in TOKENS.items()} if tokens else None,
        extra=ROSTER.replace("STAFF_URL", staff_url),
    )
    return path


class DeskSite(LiveSite):
    """LiveSite on a site file written by write_desk_site."""

    def __init__(self, directory: Path, site_path: Path) -> None:
        self.directory = directory
        self.site_path = site_path
        self.site = load_site(site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")

    @property
    def url(self) -> str:
        return self.daemon.url


@contextmanager
def desk_site(
    directory: Path, receiver: Receiver, *, tokens: bool = True, http_port: int | None = None
) -> Iterator[DeskSite]:
    """The running site; the token variables are set only while the site file is loaded."""
    with pytest.MonkeyPatch.context() as mp:
        for env, value in TOKENS.values():
            mp.setenv(env, value)
        path = write_desk_site(
            directory, receiver.url("json", "/staff"), tokens=tokens, http_port=http_port or free_port()
        )
        live = DeskSite(directory, path)
    with live:
        yield live


class Api:
    """A client of the daemon's HTTP API, as any program would be one."""

    def __init__(self, base: str, token: str | None = DESK) -> None:
        self.base = base
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body) of one request; `token` "" means this client's, None none at all."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf-8"))
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        bearer = self.token if token == "" else token
        if bearer is not None:
            req.add_header("Authorization", f"Bearer {bearer}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return exc.code, json.loads(payload)
            except json.JSONDecodeError:
                return exc.code, payload.decode("utf-8", "replace")

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = self.call(method, path, body)
        assert got == status, f"{method} {path} -> {got} {answer}"
        return answer

    def open_manual(self, **fields: Any) -> int:
        body = {"code": "002", "title": "smoke on the 3rd floor", "buildings": ["B1"], **fields}
        return int(self.ok("POST", "/api/incidents", body, status=201)["id"])

    def incident(self, incident_id: int) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/incidents/{incident_id}"))

    def open_ids(self) -> list[int]:
        return [i["id"] for i in self.ok("GET", "/api/incidents?state=all&limit=10000")["incidents"]]

    def detected_power_incident(self, live: DeskSite, building: str = "B1") -> int:
        """Cut a building's power in the simulator; the id of the outage the daemon detects."""
        live.sim.world.cut_power(building)

        def found() -> int | None:
            for inc in self.ok("GET", "/api/incidents?state=open")["incidents"]:
                if inc["scope"] == f"domain:{building}-power" and inc["category"] == "power_outage":
                    return int(inc["id"])
            return None

        incident = wait_until(found, timeout=60, what=f"{building}'s power outage in /api/incidents")
        assert incident is not None
        return incident


def env_without_token() -> dict[str, str]:
    """This process's environment without MW_TOKEN (a developer's shell may have one)."""
    return {k: v for k, v in os.environ.items() if k != "MW_TOKEN"}
