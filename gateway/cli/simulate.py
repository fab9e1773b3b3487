"""`meterwatch simulate`: serve every device of a site from its profiles, optionally along a scenario."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from gateway.cli.common import SiteArg, exit_with_issues
from gateway.config import ConfigError, Site, load_site

# Sections of the site file the simulator never reads: a ${VAR} there need not be set to simulate (the
# docker-compose simulator service has no INFLUX_TOKEN, and must not need one).
NOT_SIMULATED = frozenset({"influx", "spool", "http", "notify", "oncall", "review", "incidents", "rules"})
PLACEHOLDER = "http://unused-by-simulate.invalid"
_UNSET = re.compile(r"environment variable (\w+) is not set")


def load_for_simulate(path: Path) -> Site:
    """The site file, with ${VAR}s the simulator does not use allowed to be unset."""
    try:
        return load_site(path)
    except ConfigError as exc:
        unused = {
            m.group(1)
            for i in exc.issues
            if (m := _UNSET.search(i.message)) and i.loc and str(i.loc[0]) in NOT_SIMULATED
        }
        if not unused or any(not _UNSET.search(i.message) for i in exc.issues):
            exit_with_issues(exc, path)
        try:
            return load_site(path, {**os.environ, **dict.fromkeys(unused, PLACEHOLDER)})
        except ConfigError as again:
            exit_with_issues(again, path)


def say_if_no_broker(site: Site) -> None:
    """One line on stderr when the MQTT devices have no broker to go to; Modbus is served all the same, and
    the publisher keeps trying, so a broker started later gets the readings."""
    from gateway.cli.broker import broker_problem

    problem = broker_problem(site)
    if problem is None:
        return
    where, why, devices = problem
    port = where.rsplit(":", 1)[1]
    typer.echo(
        f"simulator: no MQTT broker at {where} ({why}): {', '.join(devices)} not published until one "
        f"answers there (start one, e.g. `mosquitto -p {port}`, or pass --no-mqtt); serving Modbus meanwhile",
        err=True,
    )


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
    site = load_for_simulate(site_file)
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
            exit_with_issues(exc, scenario)
    sim = SiteSimulator(site, scen, speed=speed, seed=seed, noise=noise, mqtt=mqtt)
    if mqtt:
        say_if_no_broker(site)
    try:
        asyncio.run(run_forever(sim, duration))
    except OSError as exc:
        typer.echo(f"simulator: cannot serve {site_file}: {exc}", err=True)
        raise typer.Exit(1) from None
