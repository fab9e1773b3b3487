"""The `meterwatch` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from gateway.config import ConfigError, Site, json_schema, load_site

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="meterwatch: watch a building's water and power meters, store every reading, raise incidents.",
)

SiteArg = typer.Argument(..., exists=False, help="site file (YAML)")


def _load_or_exit(path: Path) -> Site:
    try:
        return load_site(path)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        typer.echo(f"{len(exc.issues)} problem(s) in {path}", err=True)
        raise typer.Exit(1) from None


@app.command()
def check(site_file: Path = SiteArg) -> None:
    """Validate a site file; print a summary, or every error with file:line and field, and exit 1."""
    site = _load_or_exit(site_file)
    from gateway.cli.summary import print_summary

    ok = print_summary(site)
    raise typer.Exit(0 if ok else 1)


@app.command()
def plan(site_file: Path = SiteArg) -> None:
    """Print the exact Modbus requests of every line and the estimated cycle time (a dry run)."""
    site = _load_or_exit(site_file)
    from gateway.cli.summary import print_plan

    raise typer.Exit(0 if print_plan(site) else 1)


@app.command()
def probe(
    host: str | None = typer.Option(None, help="Modbus TCP host (or serial device server)"),
    port: int = typer.Option(502, help="TCP port"),
    serial: str | None = typer.Option(None, help="serial port, e.g. /dev/ttyUSB0 (RTU)"),
    rtu_over_tcp: bool = typer.Option(False, help="RTU framing over TCP (serial device servers)"),
    baudrate: int = typer.Option(9600),
    parity: str = typer.Option("N", help="N, E or O"),
    stopbits: int = typer.Option(1),
    unit: int = typer.Option(1, help="Modbus unit (slave) id"),
    address: str = typer.Option(..., help="0-based PDU address, decimal or 0x hex"),
    count: int = typer.Option(2, min=1, max=125, help="registers to read"),
    function: str = typer.Option("holding", help="holding (FC03) or input (FC04)"),
    timeout: float = typer.Option(1.0, help="seconds"),
) -> None:
    """Read registers once and print every interpretation (int16/uint16, 32/64-bit in all four orders)."""
    import asyncio

    from drivers.modbus.probe import run_probe

    where = (host, port, serial, rtu_over_tcp, baudrate, parity, stopbits)
    what = (unit, address, count, function, timeout)
    raise typer.Exit(asyncio.run(run_probe(*where, *what)))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the site file (for editor completion)."""
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
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
    site = _load_or_exit(site_file)
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


@app.command()
def simulate(
    site_file: Path = SiteArg,
    scenario: Path | None = typer.Option(None, help="scenario timeline, see deploy/examples/scenarios/"),
    speed: float = typer.Option(1.0, min=0.01, help="virtual time runs this many times faster"),
    seed: int = typer.Option(0, help="seed of the noisy waveforms"),
    noise: float = typer.Option(0.0, min=0.0, help="relative jitter on nominal values, e.g. 0.01"),
    mqtt: bool = typer.Option(True, help="publish the MQTT devices to the site's broker"),
    duration: float | None = typer.Option(None, help="stop after this many seconds (default: until Ctrl-C)"),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
) -> None:
    """Serve every device of a site from its profiles (Modbus TCP, RTU over TCP, RTU on a pty; MQTT)."""
    site = _load_or_exit(site_file)
    import asyncio

    from gateway.observe.logs import setup_logging
    from simulators.runner import SiteSimulator, run_forever
    from simulators.scenario import load_scenario

    setup_logging(log_level)
    scen = None
    if scenario is not None:
        try:
            scen = load_scenario(scenario, site)
        except ConfigError as exc:
            for issue in exc.issues:
                typer.echo(str(issue), err=True)
            typer.echo(f"{len(exc.issues)} problem(s) in {scenario}", err=True)
            raise typer.Exit(1) from None
    sim = SiteSimulator(site, scen, speed=speed, seed=seed, noise=noise, mqtt=mqtt)
    try:
        asyncio.run(run_forever(sim, duration))
    except OSError as exc:
        typer.echo(f"simulator: cannot serve {site_file}: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def replay(
    trace: Path = typer.Argument(..., help="long CSV ts,device,quantity,value; or a wide CSV with --mapping"),
    config: Path = typer.Option(..., "--config", help="site file (YAML) whose rules and topology to use"),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per incident instead of a table"),
    mapping: Path | None = typer.Option(None, help="column mapping of a wide CSV (YAML)"),
    tail: str = typer.Option("0s", help="run the timers on this long past the last row, e.g. 5m"),
) -> None:
    """Run a recorded trace through the site's rules in virtual time and print the incidents."""
    site = _load_or_exit(config)
    from gateway.incidents.replay import replay_command

    raise typer.Exit(replay_command(trace, site, mapping, tail, as_json))


@app.command()
def incidents(
    site_file: Path | None = typer.Argument(None, help="site file: its http section gives the address"),
    url: str | None = typer.Option(None, help="the daemon's HTTP base URL, e.g. http://127.0.0.1:9464"),
    all_: bool = typer.Option(False, "--all", help="resolved ones too, newest first"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """List the running daemon's incidents (GET /api/incidents); exit 1 when it cannot be reached."""
    from gateway.cli.incidents import list_incidents, url_for

    base = url or url_for(_load_or_exit(site_file) if site_file is not None else None)
    raise typer.Exit(list_incidents(base, all_, as_json))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
