"""What a notice's template may say about its incident, as plain JSON-able values.

The context is built when the notice is owed and stored with it in the outbox, so the message that goes out
after a restart says what was true when it was owed. Templates (gateway/respond/templates/) read only these
keys; a site's own templates may use the same ones.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Site
from gateway.core.timefmt import local_iso
from rules.model import Incident

# What residents should do, by incident category (the templates say it in their language).
ADVICE = {
    "power_outage": "power",
    "phase_loss": "power",
    "undervoltage": "power",
    "overvoltage": "power",
    "water_supply": "water",
    "water_burst": "water",
}


def buildings_of(inc: Incident, site: Site) -> list[str]:
    """The buildings an incident touches: a manual incident's own list, its scope's building, or those of
    its symptom devices."""
    if inc.buildings:
        return sorted(inc.buildings)
    scope_kind, _, ref = inc.scope.partition(":")
    if scope_kind == "building":
        return [ref]
    if scope_kind == "domain":
        dom = site.domains().get(ref)
        if dom is not None:
            return [dom[0].id]
    if scope_kind == "device":
        try:
            return [site.device(ref).building]
        except KeyError:
            return []
    found = set()
    for dev_id in inc.symptoms:
        try:
            found.add(site.device(dev_id).building)
        except KeyError:
            continue
    if scope_kind == "site" and not found:
        found = {b.id for b in site.config.buildings}
    return sorted(found)


def incident_context(inc: Incident, site: Site, now: float, **extra: Any) -> dict[str, Any]:
    """The template context of a notice about `inc`, owed at `now`; `extra` adds stage-specific keys
    (eta, duration_s, step, links, ...)."""
    tz = site.config.site.timezone
    names = {b.id: (b.name or b.id) for b in site.config.buildings}
    buildings = buildings_of(inc, site)
    ctx: dict[str, Any] = {
        "site": {
            "id": site.config.site.id,
            "name": site.config.site.name or site.config.site.id,
            "timezone": tz,
            "hotline": site.config.notify.hotline,
        },
        "incident": {
            "id": inc.id,
            "category": inc.category,
            "title": inc.title,
            "scope": inc.scope,
            "severity": inc.severity,
            "event_code": inc.event_code,
            "households": inc.households,
            "state": str(inc.state),
            "opened_at": inc.opened_at,
            "opened_local": local_iso(inc.opened_at, tz),
            "first_evidence_local": local_iso(inc.first_evidence_at, tz),
            "resolved_local": local_iso(inc.resolved_at, tz) if inc.resolved_at is not None else None,
            "symptoms": len(inc.symptoms),
            "evidence": list(inc.evidence),
            "drill": inc.drill,  # messages.render marks a drill's every message
        },
        "buildings": [{"id": b, "name": names.get(b, b)} for b in buildings],
        "advice": ADVICE.get(inc.category),
        "now_local": local_iso(now, tz),
    }
    ctx.update(extra)
    return ctx
