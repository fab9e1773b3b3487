"""The site the demo runs: the user's site file with notice channels to the demo's own receiver.

The demo never sends a message off this machine, and it must show the whole loop in a few minutes, so it
writes a derived copy of the site file into its temporary directory (the original is left as it is):

- `notify.channels` replaced by four json:// channels to the local receiver: staff, the on-call team
  (dispatch and escalation), the residents of every building and the power and water utility; in English;
- the residents' confirmation delay and the all-clear's `verify_for` cut to DEMO_CONFIRM and DEMO_VERIFY
  (a real site waits minutes), and no quiet hours, so the notices show at any hour;
- `http` on a known port with one bearer token (`${MW_DEMO_TOKEN}`, set in this process's environment
  and so in the commands it runs) named after whoever is on call now, and the dispatch links pointing at it.

`meterwatch ack` and `meterwatch report` run against this copy, as a user would against theirs.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from gateway.config import Site
from gateway.respond.roster import Roster
from simulators.ports import free_port

TOKEN_ENV = "MW_DEMO_TOKEN"
DEMO_CONFIRM = 15.0  # s: an outage this old is confirmed to residents (a real site: power 3 min, water 5)
DEMO_VERIFY = 10.0  # s: supply back and stable this long before the residents' all-clear (real: 10 min)
# channel name -> the audiences it serves; the receiver's pane shows the name
CHANNELS: dict[str, list[str]] = {
    "staff": ["staff"],
    "oncall-team": ["oncall", "backup", "supervisor", "manager"],
    "residents": ["residents"],
    "utility": ["utility:power", "utility:water"],
}
# fields holding a path relative to the site file: absolute in the copy, which lives elsewhere
_RELATIVE: tuple[tuple[str, ...], ...] = (
    ("profiles_dir",),
    ("notify", "templates_dir"),
    ("incidents", "path"),
    ("spool", "path"),
    ("mqtt", "ca_file"),
    ("mqtt", "cert_file"),
    ("mqtt", "key_file"),
)


@dataclass(frozen=True)
class DemoSite:
    path: Path  # the derived site file
    api: str  # the daemon's HTTP address, e.g. http://127.0.0.1:40123
    token: str  # the bearer token of `responder` (also in os.environ[TOKEN_ENV])
    responder: str  # who acknowledges: the on-call person's id at start, or "oncall"


def on_call_now(site: Site) -> str | None:
    oncall = site.config.oncall
    if oncall is None:
        return None
    return Roster(oncall, ZoneInfo(site.config.site.timezone)).holder("oncall", time.time())


def _absolute(doc: dict[str, Any], base: Path) -> None:
    for where in _RELATIVE:
        parent: Any = doc
        for key in where[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(where[-1]), str):
            p = Path(parent[where[-1]])
            if not p.is_absolute():
                parent[where[-1]] = str((base / p).resolve())


def derive(site: Site, source: Path, directory: Path, receiver: Any) -> DemoSite:
    """Write the demo's copy of `source` into `directory`; `receiver` gives each channel's URL (url(name))."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    _absolute(doc, source.resolve().parent)
    notify = dict(doc.get("notify") or {})
    notify["channels"] = [
        {"name": name, "url": receiver.url(name), "audiences": audiences, "language": "en", "per_minute": 600}
        for name, audiences in CHANNELS.items()
    ]
    delays = dict(notify.get("confirm_delay") or {"power_outage": 180.0, "water_supply": 300.0})
    notify["confirm_delay"] = {category: f"{DEMO_CONFIRM:g}s" for category in delays}
    notify["verify_for"] = f"{DEMO_VERIFY:g}s"
    notify.pop("quiet_hours", None)
    http = dict(doc.get("http") or {})
    host = http.get("host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    http["host"] = host
    port = int(http.get("port") or 0) or free_port()
    http["port"] = port
    http["enabled"] = True
    responder = on_call_now(site) or "oncall"
    http["tokens"] = [{"name": responder, "token": f"${{{TOKEN_ENV}}}"}]
    api = f"http://{host}:{port}"
    notify["links"] = {**dict(notify.get("links") or {}), "base_url": api}
    doc["notify"], doc["http"] = notify, http
    token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    os.environ[TOKEN_ENV] = token  # the daemon's site and the commands the demo runs read it from here
    path = directory / f"demo-{source.stem}.yaml"
    header = f"# written by the demo from {source}: channels to its local receiver, short delays\n"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return DemoSite(path, api, token, responder)
