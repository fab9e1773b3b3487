"""`meterwatch drill SCENARIO [--building B1] [SITE.yaml]`: run a drill through the real notice and dispatch
chain.

Like the other staff commands (gateway/cli/desk.py) it only talks to the running daemon's write API
(POST /api/drills): the daemon opens a drill incident that is dispatched, escalated, acknowledged and resolved
like a real one, with every message marked 演练 / DRILL; residents hear of it only when the site file's
review.drills_notify_residents says so. Staff end it with `meterwatch resolve ID`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gateway.cli.desk import Call, JsonOpt, SiteOpt, TokenOpt, UrlOpt
from gateway.respond.desk_api import DRILL_SCENARIOS

SCENARIO_HELP = "what the drill pretends happened: " + "; ".join(
    f"{name} (event code {s.code})" for name, s in DRILL_SCENARIOS.items()
)


def drill(
    scenario: str = typer.Argument(..., metavar="SCENARIO", help=SCENARIO_HELP, show_default=False),
    site_file: Path | None = SiteOpt,
    building: list[str] = typer.Option([], "--building", help="building id; repeat for more; none: the site"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a drill: a marked incident dispatched and escalated like a real one (end it with `resolve`)."""
    if scenario not in DRILL_SCENARIOS:  # the daemon says the same; here a typo needs no token or daemon
        names = ", ".join(DRILL_SCENARIOS)
        typer.echo(f"meterwatch drill: unknown scenario {scenario!r}; expected one of {names}", err=True)
        raise typer.Exit(1)
    call = Call("drill", site_file, url, token)
    body: dict[str, Any] = {"scenario": scenario, "buildings": building}
    answer = call.send("POST", "/api/drills", body)
    call.show(
        answer,
        as_json,
        lambda a: (
            f"drill {scenario} opened as incident {a.get('id')}; end it with `meterwatch resolve "
            f"{a.get('id')}`"
        ),
    )
