"""`meterwatch incidents`: list the running daemon's incidents through its HTTP API (GET /api/incidents)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from gateway.cli.common import load_or_exit
from gateway.cli.replay import json_lines, print_table
from gateway.config import Site

DEFAULT_URL = "http://127.0.0.1:9464"


class DaemonUnreachable(Exception):
    """The daemon's API did not answer as expected; the message says where and what to check."""


def url_for(site: Site | None) -> str:
    """The API base URL a site's `http:` section implies (a wildcard host means this machine)."""
    if site is None:
        return DEFAULT_URL
    http = site.config.http
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}"


def daemon_get(base: str, path: str, timeout: float = 5.0, not_found: str | None = None) -> Any:
    """GET a JSON path of the running daemon's API; DaemonUnreachable says what went wrong (`not_found`
    for a 404 when the caller knows what that means)."""
    url = f"{base.rstrip('/')}{path}"
    hint = "is `meterwatch run SITE.yaml` running there, with http enabled?"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and not_found is not None:
            raise DaemonUnreachable(not_found) from None
        raise DaemonUnreachable(f"{url}: the daemon answered HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DaemonUnreachable(f"cannot reach the daemon at {base}: {reason}; {hint}") from None
    except json.JSONDecodeError:
        raise DaemonUnreachable(f"{url}: the answer is not JSON; {hint}") from None


def fetch(base: str, state: str, limit: int = 1000, timeout: float = 5.0) -> dict[str, Any]:
    path = f"/api/incidents?state={state}&limit={limit}"
    body = daemon_get(base, path, timeout)
    if not isinstance(body, dict) or not isinstance(body.get("incidents"), list):
        raise DaemonUnreachable(
            f"{base}{path}: the answer has no incidents list; is that a meterwatch daemon?"
        )
    return body


def list_incidents(base: str, show_all: bool, as_json: bool) -> int:
    state = "all" if show_all else "open"
    try:
        body = fetch(base, state)
    except DaemonUnreachable as exc:
        print(f"meterwatch incidents: {exc}", file=sys.stderr)
        return 1
    records: list[dict[str, Any]] = body["incidents"]
    if as_json:
        sys.stdout.write(json_lines(records))
    else:
        title = f"{state} incidents of {body.get('site', '?')} (times in {body.get('timezone', '?')})"
        print_table(records, title)
        if not records:
            print("no open incidents" if state == "open" else "no incidents")
    return 0


def incidents(
    site_file: Path | None = typer.Argument(None, help="site file: its http section gives the address"),
    url: str | None = typer.Option(None, help="the daemon's HTTP base URL, e.g. http://127.0.0.1:9464"),
    all_: bool = typer.Option(False, "--all", help="resolved ones too, newest first"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """List the running daemon's incidents (GET /api/incidents); exit 1 when it cannot be reached."""
    base = url or url_for(load_or_exit(site_file) if site_file is not None else None)
    raise typer.Exit(list_incidents(base, all_, as_json))
