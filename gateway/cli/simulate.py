"""`meterwatch simulate`: serve every device of a site from its profiles, optionally along a scenario."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cli.common import SiteArg, exit_with_issues, load_or_exit
from gateway.config import ConfigError


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
    site = load_or_exit(site_file)
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
    try:
        asyncio.run(run_forever(sim, duration))
    except OSError as exc:
        typer.echo(f"simulator: cannot serve {site_file}: {exc}", err=True)
        raise typer.Exit(1) from None
