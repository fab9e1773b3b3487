"""What the commands share: the site-file argument, and loading it or exiting 1 with every problem."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from gateway.config import ConfigError, Site, load_site

SiteArg = typer.Argument(..., exists=False, help="site file (YAML)")


def exit_with_issues(exc: ConfigError, path: Path) -> NoReturn:
    """Every problem of a file with its place, then their count, on stderr; exit 1."""
    for issue in exc.issues:
        typer.echo(str(issue), err=True)
    typer.echo(f"{len(exc.issues)} problem(s) in {path}", err=True)
    raise typer.Exit(1) from None


def load_or_exit(path: Path) -> Site:
    try:
        return load_site(path)
    except ConfigError as exc:
        exit_with_issues(exc, path)
