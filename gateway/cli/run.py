"""`meterwatch run`: the gateway daemon."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cli.common import SiteArg, load_or_exit


def run(
    site_file: Path = SiteArg,
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
    state_dir: Path | None = typer.Option(
        None, help="where the spool, dead letters and incident store live; default var/<site id>"
    ),
    tap: Path | None = typer.Option(
        None, help="debug: append every polled sample to this JSON-lines file (slows sources if the disk is)"
    ),
) -> None:
    """Run the gateway daemon until SIGTERM or SIGINT."""
    site = load_or_exit(site_file)
    from gateway.app.daemon import run_daemon
    from gateway.incidents.store import StoreError
    from gateway.observe.logs import setup_logging

    setup_logging(log_level)
    try:
        code = run_daemon(site, state_dir=state_dir, tap=tap)
    except StoreError as exc:  # a store we cannot trust: say which file and stop before collecting
        typer.echo(f"meterwatch run: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)
