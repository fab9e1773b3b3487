"""`meterwatch notify preview`: the messages a site's notices would carry, rendered, nothing sent.

For a made-up incident (`--category`, `--building`: an outage opened 2 h 15 min ago, an expected restoration
45 minutes from now, example acknowledge links) or for a real one of the running daemon (`--incident ID`,
read from GET /api/incidents/{id}), every stage (or `--stage`) in the language asked (Chinese by default):
title and body, through the site's templates_dir over the shipped templates. Problems (an unknown category
or building, a template that fails, the daemon unreachable) are one line each on stderr, exit 1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import typer

from gateway.cli.common import SiteArg, load_or_exit
from gateway.cli.incidents import DaemonUnreachable, daemon_get, url_for
from gateway.config import Site, effective_rules
from gateway.config.devices import Role
from gateway.config.oncall import Role as OncallRole
from gateway.core.timefmt import local_iso
from gateway.respond.context import ADVICE, incident_context
from gateway.respond.messages import LANGUAGES, Messages, Rendered, TemplateProblem
from gateway.respond.model import Stage
from gateway.respond.roster import Roster
from rules.model import Incident, IncidentState

notify = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="The notices to residents, staff and utilities: preview their messages.",
)

# The made-up incident: open this long when previewed; the expected restoration this long after it opened.
MADE_UP_AGE = 8100.0
MADE_UP_ETA = 3 * 3600.0
RESOLVED_STAGES = (Stage.ALL_CLEAR, Stage.RESOLVED)


class PreviewError(Exception):
    """What stops a preview, in one line."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"meterwatch notify preview: {message}", err=True)
    raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- incidents


def known_categories(site: Site) -> list[str]:
    return sorted({r.category for r in effective_rules(site.config.rules)} | set(ADVICE))


def made_up_incident(site: Site, category: str, building: str | None, now: float) -> Incident:
    """An open incident of `category` in `building` (default: the site's first), as the correlator would
    open it: scoped to the building's supply domain of the category's kind when it has one."""
    if category not in known_categories(site):
        raise PreviewError(
            f"unknown category {category!r}; expected one of {', '.join(known_categories(site))}"
        )
    buildings = {b.id: b for b in site.config.buildings}
    if building is None:
        if not buildings:
            raise PreviewError("the site has no buildings")
        building = next(iter(buildings))
    b = buildings.get(building)
    if b is None:
        raise PreviewError(f"unknown building {building!r}; the site has {', '.join(buildings) or 'none'}")
    kind = ADVICE.get(category)
    dom = next((d for d in b.domains if d.kind == kind), None)
    scope = f"domain:{dom.id}" if dom is not None else f"building:{b.id}"
    households = dom.households if dom is not None and dom.households is not None else b.households
    rule = next((r for r in effective_rules(site.config.rules) if r.category == category), None)
    if category == "power_outage" and dom is not None:
        title = f"power outage: supply domain {dom.id} (building {b.id})"
    else:
        title = (rule.title if rule else "") or f"{category.replace('_', ' ')}: {scope.replace(':', ' ')}"
    devices = [d for d in site.config.devices if d.building == b.id and (dom is None or d.domain == dom.id)]
    main = next((d.id for d in devices if d.role == Role.MAIN_POWER), None)
    pressure = next((d.id for d in devices if d.role == Role.ZONE_PRESSURE), None)
    if kind == "power" and main:
        evidence = f"main meter {main} reads no voltage on any phase (example)"
    elif kind == "water" and pressure:
        evidence = f"zone pressure {pressure} is below its threshold (example)"
    else:
        evidence = f"example evidence of a made-up {category} incident in building {b.id}"
    opened = now - MADE_UP_AGE
    return Incident(
        id=1,
        key=f"{category}/{scope}",
        category=category,
        scope=scope,
        title=title,
        severity=rule.severity if rule else "major",
        event_code=rule.event_code if rule else "",
        audiences=list(rule.audiences) if rule else ["staff"],
        households=households,
        state=IncidentState.FIRING,
        opened_at=opened,
        first_evidence_at=opened - 30,
        updated_at=opened,
        symptoms={d.id: [rule.id] if rule else [] for d in devices},
        evidence=[evidence],
    )


def _ts(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return datetime.fromisoformat(str(value)).timestamp()


def incident_from_record(record: Mapping[str, Any]) -> Incident:
    """An incident as the HTTP API shows it (GET /api/incidents/{id}: times as local ISO 8601, symptoms as
    device ids) back as an Incident; ValueError when the record is not an incident."""
    try:
        opened = _ts(record["opened_at"])
        if opened is None:
            raise ValueError("no opened_at")
        category, scope = str(record["category"]), str(record["scope"])
        merged = record.get("merged_into")
        return Incident(
            id=int(record["id"]),
            key=f"{category}/{scope}",
            category=category,
            scope=scope,
            title=str(record.get("title") or ""),
            severity=str(record.get("severity") or ""),
            event_code=str(record.get("event_code") or ""),
            audiences=[str(a) for a in record.get("audiences") or []],
            households=int(record.get("households") or 0),
            state=IncidentState(str(record["state"])),
            opened_at=opened,
            first_evidence_at=_ts(record.get("first_evidence_at")) or opened,
            updated_at=opened,
            resolved_at=_ts(record.get("resolved_at")),
            flap_count=int(record.get("flap_count") or 0),
            flapping=bool(record.get("flapping")),
            reopen_count=int(record.get("reopen_count") or 0),
            merged_into=int(merged) if merged is not None else None,
            absorbed=[int(x) for x in record.get("absorbed") or []],
            symptoms={str(d): [] for d in record.get("symptoms") or []},
            evidence=[str(x) for x in record.get("evidence") or []],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an incident record ({type(exc).__name__}: {exc})") from None


def record_context(record: Mapping[str, Any], site: Site, now: float, **extra: Any) -> dict[str, Any]:
    """The template context of an incident as the HTTP API shows it: the same as incident_context's."""
    return incident_context(incident_from_record(record), site, now, **extra)


def fetch_incident(base: str, incident_id: int, timeout: float = 5.0) -> dict[str, Any]:
    """GET /api/incidents/{id} of the running daemon; DaemonUnreachable says what went wrong."""
    path = f"/api/incidents/{incident_id}"
    body = daemon_get(base, path, timeout, not_found=f"the daemon at {base} has no incident {incident_id}")
    if not isinstance(body, dict):
        raise DaemonUnreachable(f"{base}{path}: the answer is not an incident; is that a meterwatch daemon?")
    return body


# ---------------------------------------------------------------------------------------------- rendering


def stage_context(
    stage: Stage, inc: Incident, site: Site, now: float, *, example: bool, base: str
) -> dict[str, Any]:
    """The context a notice of `stage` about `inc` would carry; the resolved stages see it resolved now
    (when it is not yet); a made-up incident (`example`) gets an expected restoration and example links."""
    if stage in RESOLVED_STAGES and inc.resolved_at is None:
        inc = dataclasses.replace(inc, state=IncidentState.RESOLVED, resolved_at=now)
    extra: dict[str, Any] = {}
    if example and stage not in RESOLVED_STAGES:
        extra["eta_local"] = local_iso(inc.opened_at + MADE_UP_ETA, site.config.site.timezone)
    if stage in RESOLVED_STAGES and inc.resolved_at is not None:
        extra["duration_s"] = inc.resolved_at - inc.opened_at
    if stage == Stage.ESCALATION:
        extra["step"] = 1
    if stage in (Stage.DISPATCH, Stage.ESCALATION, Stage.TARGET_MISSED):
        extra["team"] = preview_team(site, now, ["backup"] if stage == Stage.ESCALATION else ["oncall"])
    if example and stage in (Stage.DISPATCH, Stage.ESCALATION):
        extra["links"] = {"ack": f"{base}/ack/EXAMPLE", "on_site": f"{base}/on-site/EXAMPLE"}
    return incident_context(inc, site, now, **extra)


def preview_team(site: Site, now: float, roles: list[OncallRole]) -> list[dict[str, str]]:
    """Who the roster would call now for `roles` (names and phones as the message shows them)."""
    roster = Roster(site.config.oncall, ZoneInfo(site.config.site.timezone))
    team = []
    for role in roles:
        p = roster.person(roster.holder(role, now))
        team.append({"role": role, "name": p.name if p else "", "phone": p.phone if p else ""})
    return team


def render_all(
    messages: Messages,
    stages: list[Stage],
    language: str,
    inc: Incident,
    site: Site,
    now: float,
    *,
    example: bool,
    base: str,
) -> list[tuple[Stage, Rendered]]:
    """Every stage's message; the digest merges this incident's residents' notice and update."""

    def one(stage: Stage) -> Rendered:
        if stage == Stage.DIGEST:
            merged = [one(Stage.RESIDENTS_NOTICE), one(Stage.RESIDENTS_UPDATE)]
            return messages.render(stage, language, {"items": [dataclasses.asdict(r) for r in merged]})
        ctx = stage_context(stage, inc, site, now, example=example, base=base)
        return messages.render(stage, language, ctx)

    return [(stage, one(stage)) for stage in stages]


def print_rendered(messages: Messages, language: str, out: list[tuple[Stage, Rendered]]) -> None:
    for stage, msg in out:
        path = messages.template_path(stage, language)
        source = (
            f" from {path}"
            if messages.override is not None and path.is_relative_to(messages.override)
            else ""
        )
        typer.echo(f"=== {stage.value} [{language}]{source} ===")
        typer.echo(msg.title)
        typer.echo("-" * 40)
        typer.echo(msg.body)
        typer.echo("")


@notify.command()
def preview(
    site_file: Path = SiteArg,
    category: str | None = typer.Option(
        None, help="preview a made-up incident of this category, e.g. power_outage or water_supply"
    ),
    building: str | None = typer.Option(None, help="the made-up incident's building (default: the first)"),
    incident: int | None = typer.Option(
        None, "--incident", help="preview a real incident of the running daemon, by id"
    ),
    url: str | None = typer.Option(
        None, help="the daemon's HTTP base URL (default: from the site's http section)"
    ),
    language: str = typer.Option("zh", help="language of the messages: zh or en"),
    stage: str | None = typer.Option(None, help="only this stage, e.g. residents_notice (default: all)"),
) -> None:
    """Print the title and body of every stage's message for an incident, as the site's templates render
    them; nothing is sent."""
    site = load_or_exit(site_file)
    if language not in LANGUAGES:
        _fail(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    stages = list(Stage)
    if stage is not None:
        if stage not in {s.value for s in Stage}:
            _fail(f"unknown stage {stage!r}; expected one of {', '.join(s.value for s in Stage)}")
        stages = [Stage(stage)]
    if (category is None) == (incident is None):
        _fail("give either --category (a made-up incident) or --incident ID (a real one)")
    base = (url or url_for(site)).rstrip("/")
    now = float(int(time.time()) // 60 * 60)
    try:
        if incident is not None:
            try:
                inc = incident_from_record(fetch_incident(base, incident))
            except ValueError as exc:
                raise PreviewError(f"{base}/api/incidents/{incident}: {exc}") from None
        else:
            assert category is not None
            inc = made_up_incident(site, category, building, now)
        messages = Messages.for_site(site)
        problems = messages.check()
        if problems:
            for problem in problems:
                typer.echo(f"meterwatch notify preview: {problem}", err=True)
            raise typer.Exit(1)
        out = render_all(messages, stages, language, inc, site, now, example=incident is None, base=base)
    except (PreviewError, DaemonUnreachable, TemplateProblem) as exc:
        _fail(str(exc))
    print_rendered(messages, language, out)
