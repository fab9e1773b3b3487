"""`meterwatch report INCIDENT [SITE.yaml]`: an incident's report as Markdown and HTML (and JSON) files;
`meterwatch report --month 2026-11 [SITE.yaml]`: the monthly review (gateway/review/monthly.py).

It reads the daemon's incident store directly (read-only), so it works with the daemon stopped and with the
time-series database down: the store is where `meterwatch run` keeps it, the site file's incidents.path or
<state dir>/incidents.sqlite, the state dir being --state-dir or the daemon's default (var/<site id>).
The site file gives the time zone, the buildings' names and the targets; it is read whole, so the
environment it names (${ENV}) must be set as for the daemon.

Files, into -o DIR (default: here):
    report-<id>.md, report-<id>-<device>.png   the Markdown and the charts it shows
    report-<id>.html                           one page, charts inside
    report-<id>.json                           the same report for a property-management system
    review-<month>.md | .html | .csv | .json   the monthly review; csv: its incident list

Every failure is one line on stderr and exit 1 (a site file's problems: one line each, as `meterwatch check`
prints them); nothing is written then.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer

from gateway.cli.common import load_or_exit
from gateway.config import Site

DEFAULT_SITE = Path("/etc/meterwatch/site.yaml")  # where deploy/ installs it
INCIDENT_FORMATS = ("md", "html", "json")
MONTH_FORMATS = ("md", "html", "csv", "json")


class ReportFailed(Exception):
    """What stops the report being written, in one line."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"meterwatch report: {message}", err=True)
    raise typer.Exit(1)


def parse_formats(text: str, allowed: tuple[str, ...]) -> list[str]:
    """`md,html` -> ["md", "html"]; ReportFailed naming what is not one of `allowed`."""
    given = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not given:
        raise ReportFailed(f"--format: empty; expected a comma-separated list of {', '.join(allowed)}")
    unknown = [f for f in given if f not in allowed]
    if unknown:
        raise ReportFailed(f"--format: unknown format {unknown[0]!r}; expected some of {', '.join(allowed)}")
    return list(dict.fromkeys(given))


def parse_incident(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or value > 2**63 - 1:
        raise ReportFailed(f"INCIDENT: expected an incident id (a whole number from 1), got {text!r}")
    return value


def store_of(site: Site, state_dir: Path | None) -> Path:
    from gateway.app.daemon import default_state_dir
    from gateway.app.detect import store_path

    return store_path(site, state_dir if state_dir is not None else default_state_dir(site))


def write_files(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file or none: each goes to a temporary name first and all are renamed at the end."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportFailed(f"-o {out}: cannot make the folder: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise ReportFailed(f"-o {out}: not a folder")
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            tmp = out / f".{name}.part"  # the usual permissions (umask), unlike mkstemp's 0600
            staged.append((tmp, out / name))
            tmp.write_bytes(data)
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise ReportFailed(f"cannot write into {out}: {exc.strerror or exc}") from None
    return [final for _, final in staged]


def incident_files(
    site: Site, store: Path, incident_id: int, formats: list[str], lang: str
) -> dict[str, bytes]:
    """The files of one incident's report, by name."""
    from gateway.incidents.store import StoreReader
    from gateway.review.data import ReviewReader
    from gateway.review.report import (
        NoIncident,
        draw_charts,
        incident_report,
        render_html,
        render_markdown,
        report_json,
    )

    try:
        report = incident_report(ReviewReader(store), StoreReader(store), site, incident_id, lang)
    except NoIncident:
        raise ReportFailed(f"no incident {incident_id} in {store}") from None
    except FileNotFoundError:
        raise ReportFailed(
            f"{store}: no incident store here; is the state dir right (--state-dir, default var/<site id>)?"
        ) from None
    except (OSError, sqlite3.Error) as exc:  # unreadable (the daemon's state dir is 0700), or not SQLite
        raise ReportFailed(f"{store}: cannot read the incident store: {exc}") from None
    charts = draw_charts(report) if {"md", "html"} & set(formats) else []
    stem = f"report-{incident_id}"
    files: dict[str, bytes] = {}
    if "md" in formats:
        names = {c.name: f"{stem}-{c.name}.png" for c in charts}
        files[f"{stem}.md"] = render_markdown(report, names).encode("utf-8")
        files.update({names[c.name]: c.png for c in charts})
    if "html" in formats:
        files[f"{stem}.html"] = render_html(report, charts).encode("utf-8")
    if "json" in formats:
        files[f"{stem}.json"] = _json(report_json(report))
    return files


def month_files(site: Site, store: Path, month: str, formats: list[str], lang: str) -> dict[str, bytes]:
    """The files of the monthly review, by name (gateway/review/monthly.py makes them)."""
    if importlib.util.find_spec("gateway.review.monthly") is None:
        raise ReportFailed("--month: the monthly review is not part of this version yet")
    from gateway.review import monthly
    from gateway.review.data import ReviewReader

    try:
        monthly.month_bounds(month, site.config.site.timezone)
    except ValueError as exc:
        raise ReportFailed(f"--month: {str(exc).removeprefix('month: ')}") from None
    if not store.exists():
        raise ReportFailed(
            f"{store}: no incident store here; is the state dir right (--state-dir, default var/<site id>)?"
        )
    try:
        review = monthly.monthly_review(site, ReviewReader(store), month)
    except (OSError, sqlite3.Error) as exc:
        raise ReportFailed(f"{store}: cannot read the incident store: {exc}") from None
    stem = f"review-{month}"
    makers: dict[str, Callable[[], bytes]] = {
        "md": lambda: monthly.render_month_markdown(review, lang).encode("utf-8"),
        "html": lambda: monthly.render_month_html(review, lang).encode("utf-8"),
        "csv": lambda: monthly.month_csv(review).encode("utf-8"),
        "json": lambda: _json(monthly.month_json(review)),
    }
    return {f"{stem}.{f}": makers[f]() for f in formats}


def _json(data: object) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")


def report(
    incident: str | None = typer.Argument(
        None, metavar="INCIDENT", help="incident id (leave it out with --month)", show_default=False
    ),
    site_file: Path | None = typer.Argument(
        None, metavar="SITE.yaml", help=f"site file; default {DEFAULT_SITE}", show_default=False
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="the daemon's state dir (its incident store); default var/<site id>"
    ),
    out: Path = typer.Option(Path("."), "-o", "--output", help="folder the files are written to"),
    formats: str = typer.Option(
        "md,html", "--format", help="comma-separated: md, html, json (with --month also csv)"
    ),
    language: str = typer.Option("zh", "--language", "--lang", help="zh or en"),
    month: str | None = typer.Option(None, "--month", help="the monthly review of this month (YYYY-MM)"),
) -> None:
    """Write an incident's report (or with --month the monthly review) from the incident store."""
    if language not in ("zh", "en"):
        _fail(f"--language: unknown language {language!r}; expected zh or en")
    try:
        if month is not None:
            if incident is not None and site_file is None and not incident.isdigit():
                site_file = Path(incident)  # `report --month 2026-11 SITE.yaml`
            elif incident is not None:
                raise ReportFailed("give an incident id or --month, not both")
            wanted = parse_formats(formats, MONTH_FORMATS)
        else:
            # `report SITE.yaml`: the file in the incident's place
            if incident is None or (site_file is None and Path(incident).suffix in (".yaml", ".yml")):
                raise ReportFailed("give an incident id (meterwatch report 42 SITE.yaml) or --month YYYY-MM")
            incident_id = parse_incident(incident)
            wanted = parse_formats(formats, INCIDENT_FORMATS)
        path = site_file if site_file is not None else DEFAULT_SITE
        if site_file is None and not path.exists():
            raise ReportFailed(f"no site file given and {DEFAULT_SITE} does not exist: give SITE.yaml")
        site = load_or_exit(path)
        store = store_of(site, state_dir)
        if month is not None:
            files = month_files(site, store, month, wanted, language)
        else:
            files = incident_files(site, store, incident_id, wanted, language)
        for written in write_files(out, files):
            typer.echo(str(written))
    except ReportFailed as exc:
        _fail(str(exc))
