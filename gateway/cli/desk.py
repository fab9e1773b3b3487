"""Staff actions from a terminal: `meterwatch open | ack | on-site | note | eta | cause | resolve`,
`meterwatch maintenance add` and `meterwatch oncall [show] | set`.

They talk only to the running daemon's HTTP write API (gateway/web/api.py), never to its files: the daemon
applies an action between two detection rounds, with the notices it owes, and answers once it is committed.
The address comes from `--url` or the optional SITE file's `http:` section (as for `meterwatch incidents`);
the bearer token from `--token` or the MW_TOKEN environment variable (one of the site file's http.tokens:
its name is who the timeline says acted). The token is never printed.

Every failure is one line on stderr and exit 1: the daemon unreachable, a missing or refused token (with a
hint about MW_TOKEN), no such incident, or what the server refused and why (its `{"error": ...}` text).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typer.core import TyperGroup

from gateway.config import yamlsrc
from gateway.config.http import HttpConfig
from gateway.respond.desk_api import CAUSE_CODES

DEFAULT_URL = "http://127.0.0.1:9464"  # http's defaults
TOKEN_ENV = "MW_TOKEN"
TIMEOUT = 15.0  # seconds: an action waits for the next detection round and its commit
HINT_DAEMON = "is `meterwatch run SITE.yaml` running there, with http enabled?"
HINT_TOKEN = f"give one of the site file's http.tokens with --token or the {TOKEN_ENV} environment variable"


class ApiError(Exception):
    """What the daemon's API refused or why it could not be asked, in one line for a person."""


# -- where the daemon listens ----------------------------------------------------------------------------
class _Address(BaseModel):
    """The part of the `http:` section a client needs (HttpConfig's defaults; the rest is the daemon's)."""

    model_config = ConfigDict(extra="ignore")
    host: str = HttpConfig.model_fields["host"].default
    port: int = Field(default=HttpConfig.model_fields["port"].default, ge=0, le=65535)
    enabled: bool = True


def address_of(site_file: Path) -> str:
    """The API base URL a site file's `http:` section gives, read without the rest of the file: a member
    of staff need not hold the daemon's secrets (tokens, channel URLs as ${ENV}) to reach it. Raises
    ApiError naming file:line when the section cannot give one."""
    try:
        loaded = yamlsrc.load(site_file)
    except yamlsrc.YamlSyntaxError as exc:
        raise ApiError(str(exc)) from None
    data = loaded.data if isinstance(loaded.data, dict) else {}
    http = data.get("http") or {}
    where = f"{site_file}:{loaded.line_of(('http',)) or 1}"
    unset = [i.message for i in loaded.issues if tuple(i.loc[:2]) in (("http", "host"), ("http", "port"))]
    if unset:
        raise ApiError(f"{where}: {unset[0]}")
    if not isinstance(http, dict):
        raise ApiError(f"{where}: http: expected a mapping such as {{host: 127.0.0.1, port: 9464}}")
    try:
        address = _Address.model_validate(http)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ApiError(f"{where}: http.{field}: {first['msg']}; expected the daemon's address") from None
    if not address.enabled:
        raise ApiError(f"{where}: http.enabled is false: that daemon serves no API")
    # as `meterwatch incidents` (gateway/cli/incidents.py, url_for): a wildcard address means this machine
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    if ":" in host:
        host = f"[{host}]"
    if address.port == 0:
        raise ApiError(f"{where}: http.port is 0 (a free port picked at start): give --url")
    return f"http://{host}:{address.port}"


# -- talking to the daemon -------------------------------------------------------------------------------
def daemon_call(
    base: str,
    method: str,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
) -> Any:
    """Send one request to the write API; its JSON answer, or ApiError saying what went wrong."""
    url = f"{base.rstrip('/')}{path}"
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ApiError(_refusal(exc, base, path)) from None
    except TimeoutError:
        raise ApiError(
            f"no answer from the daemon at {base} within {timeout:g}s; the action may still be applied: "
            "check with `meterwatch incidents`"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise ApiError(
                f"no answer from the daemon at {base} within {timeout:g}s; {HINT_DAEMON}"
            ) from None
        raise ApiError(f"cannot reach the daemon at {base}: {reason}; {HINT_DAEMON}") from None
    except json.JSONDecodeError:
        raise ApiError(f"{url}: the answer is not JSON; is that a meterwatch daemon?") from None


def daemon_post(base: str, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
    return daemon_call(base, "POST", path, token, body)


def _refusal(exc: urllib.error.HTTPError, base: str, path: str) -> str:
    """The server's `{"error": ...}` in a line, with a hint where the fix is on this side."""
    try:
        answer = json.loads(exc.read() or b"null")
    except (json.JSONDecodeError, OSError):
        answer = None
    said = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(said, str):
        if exc.code in (404, 405):  # FastAPI's own "Not Found": the route itself is missing
            return (
                f"the daemon at {base} has no {path.split('?')[0]}: is it a meterwatch with the write API "
                f"(HTTP {exc.code})?"
            )
        return f"{base}{path}: the daemon answered HTTP {exc.code} {exc.reason}"
    if exc.code == 401:
        return f"{said}; {HINT_TOKEN}"
    if exc.code == 403:
        return f"{said}; check --token / {TOKEN_ENV} against the site file's http.tokens"
    if exc.code == 503:
        return f"{said} (try again shortly)"
    return said


# -- what the commands share -----------------------------------------------------------------------------
SiteOpt = typer.Argument(None, help="site file: its http section gives the daemon's address")
UrlOpt = typer.Option(None, "--url", help="the daemon's HTTP base URL, e.g. http://127.0.0.1:9464")
TokenOpt = typer.Option(
    None,
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    show_default=False,
    help="bearer token: one of the site file's http.tokens (better in the environment than on the line)",
)
JsonOpt = typer.Option(False, "--json", help="print the daemon's JSON answer instead of a summary")


class Call:
    """One command's target and token, resolved before anything is sent."""

    def __init__(self, command: str, site_file: Path | None, url: str | None, token: str | None) -> None:
        self.command = command
        if not token or not token.strip():
            self.fail(f"no token: {HINT_TOKEN}")
        self.token = token.strip()
        if url is not None:
            self.base = url
        elif site_file is not None:
            try:
                self.base = address_of(site_file)
            except ApiError as exc:
                self.fail(str(exc))
        else:
            self.base = DEFAULT_URL

    def fail(self, message: str) -> NoReturn:
        typer.echo(f"meterwatch {self.command}: {message}", err=True)
        raise typer.Exit(1)

    def send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return daemon_call(self.base, method, path, self.token, body)
        except ApiError as exc:
            self.fail(str(exc))

    def show(self, answer: Any, as_json: bool, summary: Callable[[Any], str]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
        else:
            typer.echo(summary(answer))


def _id_path(incident_id: int, action: str) -> str:
    return f"/api/incidents/{incident_id}/{action}"


IdArg = typer.Argument(..., min=1, help="incident id (see `meterwatch incidents`)")


# -- summaries -------------------------------------------------------------------------------------------
def describe_response(v: dict[str, Any], headline: str = "") -> str:
    """A response view as a few lines a person reads at a glance."""

    def at(name: str) -> str:
        value = v.get(f"{name}_at")
        return str(value) if value else "-"

    kind = "manual" if v.get("manual") else "detected"
    head = headline or f"incident {v.get('incident_id')}"
    lines = [f"{head} ({kind})"]
    if v.get("dispatched_at"):
        missed = " (missed)" if v.get("target_missed") else ""
        lines.append(f"  dispatched     {at('dispatched')}, target {at('target')}{missed}")
    else:
        lines.append("  dispatched     - (its severity is not dispatched)")
    lines.append(f"  called         {', '.join(v.get('called') or []) or '-'}")
    acked = f"{at('acked')} by {v.get('acked_by')}" if v.get("acked_at") else "not yet"
    lines.append(f"  acknowledged   {acked}")
    on_site = f"{at('on_site')} by {v.get('on_site_by')}" if v.get("on_site_at") else "not yet"
    lines.append(f"  on site        {on_site}")
    lines.append(f"  expected back  {at('eta') if v.get('eta_at') else 'unknown'}")
    lines.append(f"  cause          {v.get('cause') or '-'}")
    notes = v.get("notes") or []
    for n in notes:
        lines.append(f"  note           {n.get('at')} {n.get('who')}: {n.get('text')}")
    return "\n".join(lines)


def describe_oncall(v: dict[str, Any]) -> str:
    how = "an override" if v.get("override") else "the weekly roster"
    lines = [f"on call at {v.get('at')} (by {how})"]
    for role in ("oncall", "backup", "supervisor", "manager"):
        p = v.get(role)
        who = "-" if not p else "  ".join(x for x in (p.get("id"), p.get("name"), p.get("phone")) if x)
        lines.append(f"  {role:<11}{who}")
    return "\n".join(lines)


# -- incident commands -----------------------------------------------------------------------------------
def open_(
    site_file: Path | None = SiteOpt,
    code: str = typer.Option(
        ...,
        "--code",
        help="event code: 001 safety, 002 fire, 003 equipment, 004 property loss, 005 complaint, 006 other",
    ),
    title: str = typer.Option(..., "--title", help="what happened, in a few words"),
    building: list[str] = typer.Option([], "--building", help="building id; repeat for more; none: the site"),
    note: str = typer.Option("", "--note", help="the first note: what the caller said"),
    severity: str | None = typer.Option(None, "--severity", help="default: critical for 001/002, else major"),
    households: int | None = typer.Option(None, "--households", min=0, help="default: the buildings'"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Open a manual incident reported by phone; it is dispatched and escalated like a detected one."""
    call = Call("open", site_file, url, token)
    body: dict[str, Any] = {"code": code, "title": title, "buildings": building, "note": note}
    if severity is not None:
        body["severity"] = severity
    if households is not None:
        body["households"] = households
    answer = call.send("POST", "/api/incidents", body)
    call.show(answer, as_json, lambda a: f"opened incident {a.get('id')}")


def _action(
    command: str,
    action: str,
    headline: str,
    incident_id: int,
    body: dict[str, Any] | None,
    site_file: Path | None,
    url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    call = Call(command, site_file, url, token)
    answer = call.send("POST", _id_path(incident_id, action), body)
    call.show(answer, as_json, lambda a: describe_response(a, f"{headline} incident {incident_id}"))


def ack(
    incident_id: int = IdArg,
    site_file: Path | None = SiteOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Acknowledge an incident: you take it on, the escalation stops."""
    _action("ack", "ack", "acknowledged", incident_id, None, site_file, url, token, as_json)


def on_site(
    incident_id: int = IdArg,
    site_file: Path | None = SiteOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Report that someone is at the scene (this also acknowledges)."""
    _action("on-site", "on-site", "on site for", incident_id, None, site_file, url, token, as_json)


def note(
    incident_id: int = IdArg,
    text: str = typer.Argument(..., help="the note, in quotes"),
    site_file: Path | None = SiteOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Add a note to an incident's timeline."""
    _action("note", "note", "noted on", incident_id, {"text": text}, site_file, url, token, as_json)


def eta(
    incident_id: int = IdArg,
    when: str = typer.Argument(
        ..., metavar="WHEN", help="expected restoration, site-local time: 2026-12-01T18:00, or 'none'"
    ),
    site_file: Path | None = SiteOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Set the expected restoration time (residents already told get an update), or `none` to clear it."""
    value = None if when.strip().lower() == "none" else when.strip()
    _action(
        "eta",
        "eta",
        "expected restoration set for",
        incident_id,
        {"eta": value},
        site_file,
        url,
        token,
        as_json,
    )


def cause(
    incident_id: int = IdArg,
    text: str = typer.Argument(..., help="what caused it, in quotes"),
    site_file: Path | None = SiteOpt,
    code: str = typer.Option("", help=f"kind of cause for the monthly review: {', '.join(CAUSE_CODES)}"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Record the cause of an incident (in words, and optionally its kind with --code)."""
    body = {"cause": text, "code": code}
    _action("cause", "cause", "cause set for", incident_id, body, site_file, url, token, as_json)


def resolve(
    incident_id: int = IdArg,
    site_file: Path | None = SiteOpt,
    note_: str = typer.Option("", "--note", help="how it was resolved"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Resolve a manual incident (a detected one ends when the meters say so)."""
    _action("resolve", "resolve", "resolved", incident_id, {"note": note_}, site_file, url, token, as_json)


# -- maintenance -----------------------------------------------------------------------------------------
maintenance = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Planned maintenance windows: declare one."
)


@maintenance.command("add")
def maintenance_add(
    site_file: Path | None = SiteOpt,
    window_id: str = typer.Option(..., "--id", help="window id, e.g. b1-pump-2026-05"),
    start: str = typer.Option(..., "--start", help="site-local time the works begin: 2026-05-10T09:00"),
    end: str = typer.Option(..., "--end", help="site-local time they end: 2026-05-10T12:00"),
    building: list[str] = typer.Option([], "--building", help="building id; repeat for more; none: all"),
    category: list[str] = typer.Option(
        [], "--category", help="incident category the works explain; default power_outage and water_supply"
    ),
    notice_before: str | None = typer.Option(
        None, "--notice-before", help="advance notice to residents this long before the start (default 1d)"
    ),
    note_: str = typer.Option("", "--note", help="what the works are, for the advance notice"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Declare planned works: what they cut sends no outage notice; residents get an advance notice."""
    call = Call("maintenance add", site_file, url, token)
    body: dict[str, Any] = {"id": window_id, "start": start, "end": end, "buildings": building, "note": note_}
    if category:
        body["categories"] = category
    if notice_before is not None:
        body["notice_before"] = notice_before
    answer = call.send("POST", "/api/maintenance", body)
    where = ", ".join(building) or "every building"
    call.show(
        answer,
        as_json,
        lambda a: f"maintenance window {a.get('id')} declared: {a.get('start')} to {a.get('end')}, {where}",
    )


# -- on call ---------------------------------------------------------------------------------------------
class _ShowByDefault(TyperGroup):
    """`meterwatch oncall`, `meterwatch oncall SITE` and `meterwatch oncall --url ...` mean `oncall show`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's vendored click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


oncall = typer.Typer(
    rich_markup_mode=None,
    cls=_ShowByDefault,
    help="Who is on call now (`show`, the default) and overrides (`set`).",
)


@oncall.command("show")
def oncall_show(
    site_file: Path | None = SiteOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Who holds on-call, backup, supervisor and manager now, with their phone numbers."""
    call = Call("oncall", site_file, url, token)
    call.show(call.send("GET", "/api/oncall"), as_json, describe_oncall)


@oncall.command("set")
def oncall_set(
    site_file: Path | None = SiteOpt,
    person: str = typer.Option(..., "--oncall", help="person id (oncall.people) who holds on-call"),
    backup: str | None = typer.Option(None, "--backup", help="person id of the backup"),
    start: str = typer.Option(..., "--start", help="site-local time: 2026-12-01T08:00"),
    end: str = typer.Option(..., "--end", help="site-local time: 2026-12-02T08:00"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Someone else holds on-call (and optionally backup) from START to END, whatever the roster says."""
    call = Call("oncall set", site_file, url, token)
    body: dict[str, Any] = {"oncall": person, "start": start, "end": end}
    if backup is not None:
        body["backup"] = backup
    call.show(call.send("POST", "/api/oncall/overrides", body), as_json, describe_oncall)


def register(app: typer.Typer) -> None:
    """Add the staff commands to the `meterwatch` app."""
    app.command("open")(open_)
    app.command()(ack)
    app.command("on-site")(on_site)
    for command in (note, eta, cause, resolve):
        app.command()(command)
    app.add_typer(maintenance, name="maintenance")
    app.add_typer(oncall, name="oncall")
