"""`meterwatch check`, `plan` and `schema`: what a site file says, before anything runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from gateway.cli.common import SiteArg, load_or_exit
from gateway.config import json_schema


def check(site_file: Path = SiteArg) -> None:
    """Validate a site file; print a summary, or every error with file:line and field, and exit 1."""
    site = load_or_exit(site_file)
    from gateway.cli.summary import print_summary

    ok = print_summary(site)
    raise typer.Exit(0 if ok else 1)


def plan(site_file: Path = SiteArg) -> None:
    """Print the exact Modbus requests of every line and the estimated cycle time (a dry run)."""
    site = load_or_exit(site_file)
    from gateway.cli.summary import print_plan

    raise typer.Exit(0 if print_plan(site) else 1)


def schema() -> None:
    """Print the JSON Schema of the site file (for editor completion)."""
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
