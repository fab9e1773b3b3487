"""`meterwatch deadletter replay SITE`: send the points InfluxDB refused for good again, once the cause is
fixed (a wrong influx.url, a bucket that did not exist, a schema conflict resolved); the daemon may run
meanwhile (gateway/sink/deadletter_replay.py). Says how many were sent and keeps those refused again."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import typer

from gateway.cli.common import SiteArg, load_or_exit

deadletter = typer.Typer(
    no_args_is_help=True,
    help="the dead-letter file: points InfluxDB refused for good (<state dir>/deadletter.jsonl)",
)


def _where(url: str) -> str:
    """The URL without credentials, for a message."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@deadletter.command()
def replay(
    site_file: Path = SiteArg,
    state_dir: Path | None = typer.Option(
        None, help="the daemon's state dir (where deadletter.jsonl is); default var/<site id>"
    ),
) -> None:
    """Send the dead letters to the site's InfluxDB again; those refused again stay in the file.

    Exit status 0 when every dead letter was sent, 1 when some are kept (refused again, or InfluxDB
    stopped answering)."""
    site = load_or_exit(site_file)
    from gateway.app.daemon import default_state_dir
    from gateway.sink.deadletter_replay import DEADLETTER_NAME, ReplayBusy
    from gateway.sink.deadletter_replay import replay as send_again
    from gateway.sink.influx import InfluxWriter

    influx = site.config.influx
    if influx is None:
        typer.echo(f"meterwatch deadletter replay: {site_file} has no influx section to send to", err=True)
        raise typer.Exit(1)
    path = (state_dir or default_state_dir(site)) / DEADLETTER_NAME
    writer = InfluxWriter(influx)
    try:
        result = send_again(path, writer, influx.batch_size)
    except ReplayBusy as exc:
        typer.echo(f"meterwatch deadletter replay: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"meterwatch deadletter replay: {exc.filename or path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        writer.close()
    if result.total == 0:
        typer.echo(f"no dead letters in {path}")
        return
    typer.echo(f"sent {result.sent} of {result.total} dead letters to {_where(influx.url)}")
    if result.refused:
        first = result.refused[0][1]
        typer.echo(f"{len(result.refused)} refused again, kept in {path}: {first.message}", err=True)
    if result.stopped is not None:
        typer.echo(
            f"stopped: {result.stopped.message}; {len(result.unsent)} not sent, kept in {path}", err=True
        )
    elif result.unsent:
        typer.echo(f"{len(result.unsent)} unreadable records kept in {path}", err=True)
    raise typer.Exit(1 if result.kept else 0)
