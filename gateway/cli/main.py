"""The `meterwatch` command line: one app, its commands in one module per group (gateway/cli/*.py)."""

from __future__ import annotations

from importlib.metadata import version

import typer

from gateway.cli.deadletter import deadletter
from gateway.cli.desk import register as register_desk
from gateway.cli.drill import drill
from gateway.cli.fleet import fleet
from gateway.cli.incidents import incidents
from gateway.cli.notify import notify
from gateway.cli.probe import probe
from gateway.cli.qr import qr
from gateway.cli.replay import replay
from gateway.cli.report import report
from gateway.cli.run import run
from gateway.cli.simulate import simulate
from gateway.cli.site import check, plan, schema

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # plain help: flags read --json or --color/--no-color, not "<bool>"
    rich_markup_mode=None,
    help="meterwatch: watch a building's water and power meters, store every reading, raise incidents.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"meterwatch {version('meterwatch')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """meterwatch: watch a building's water and power meters, store every reading, raise incidents."""


# in the order `meterwatch --help` lists them
for command in (check, plan, probe, schema, run, simulate, replay, incidents):
    app.command()(command)
app.add_typer(notify, name="notify")
app.command()(qr)  # the QR code of a building's public page (gateway/cli/qr.py)
register_desk(app)  # staff actions through the daemon's write API: open, ack, on-site, ..., oncall
app.add_typer(deadletter, name="deadletter")  # send refused points again (gateway/cli/deadletter.py)
app.command()(drill)  # a drill through the real notice and dispatch chain (gateway/cli/drill.py)
app.command()(report)  # an incident's report or the monthly review, from the store (gateway/cli/report.py)
app.add_typer(fleet, name="fleet")  # the fleet view of a company's gateways, keygen (gateway/cli/fleet.py)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
