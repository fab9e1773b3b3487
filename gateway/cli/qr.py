"""`meterwatch qr B1 -o b1.png [SITE]`: the QR code of a building's public page, for its notice board.

The code holds <address>/b/<building>, the address being --base-url or the site file's
notify.links.base_url (the gateway's address as phones reach it). Residents scan it and see whether water
and power are on, since when, the team's status and the hotline (gateway/web/pages.py). Written with segno:
PNG by default, SVG (or anything segno writes) by the output's extension.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import NoReturn

import segno
import typer
from pydantic import ValidationError

from gateway.cli.common import load_or_exit
from gateway.config.notify import Links

# Q: a printed code still scans with a quarter of it smudged or torn (the notice board is outdoors)
ERROR_LEVEL = "q"
DEFAULT_SCALE = 10  # pixels per module: a version 3 code with its border is 450 px, about 4 cm at 300 dpi
BORDER = 4  # modules of quiet zone, as the standard asks


class QrError(Exception):
    """What stops the QR code being written, in one line."""


def building_url(base_url: str, building: str) -> str:
    return f"{base_url.rstrip('/')}/b/{urllib.parse.quote(building, safe='')}"


def check_base_url(value: str) -> str:
    """The address as notify.links.base_url accepts it (http(s), no user, query or fragment)."""
    try:
        checked = Links(base_url=value).base_url
    except ValidationError as exc:
        raise QrError(f"--base-url: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    assert checked is not None
    return checked


def make(building: str, base_url: str, out: Path, scale: int = DEFAULT_SCALE) -> str:
    """Write the QR code of `building`'s page under `base_url` to `out`; the URL it holds."""
    url = building_url(base_url, building)
    code = segno.make_qr(url, error=ERROR_LEVEL)
    try:
        code.save(str(out), scale=scale, border=BORDER)
    except ValueError as exc:  # an extension segno cannot write
        raise QrError(f"{out}: {exc}; use .png or .svg") from None
    except OSError as exc:
        raise QrError(f"cannot write {out}: {exc.strerror or exc}") from None
    return url


def _fail(message: str) -> NoReturn:
    typer.echo(f"meterwatch qr: {message}", err=True)
    raise typer.Exit(1)


def qr(
    building: str = typer.Argument(..., help="building id (the site file's buildings[].id), e.g. B1"),
    site_file: Path | None = typer.Argument(
        None, help="site file: checks the building and gives notify.links.base_url"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="file to write (.png or .svg); default <building>.png"
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="the gateway's address as phones reach it (default notify.links.base_url)"
    ),
    scale: int = typer.Option(DEFAULT_SCALE, min=1, max=100, help="pixels per module"),
) -> None:
    """Write the QR code of a building's public status page (<base-url>/b/<building>) for its notice board."""
    address: str | None = None
    if site_file is not None:
        site = load_or_exit(site_file)
        known = [b.id for b in site.config.buildings]
        if building not in known:
            _fail(f"unknown building {building!r}; {site_file} has {', '.join(known) or 'no buildings'}")
        address = site.config.notify.links.base_url
    try:
        if base_url is not None:
            address = check_base_url(base_url)
        if address is None:
            where = f"{site_file} has no notify.links.base_url" if site_file else "no site file was given"
            raise QrError(
                f"no address for the page: {where}; pass --base-url https://<the gateway as phones reach "
                "it> or set notify.links.base_url"
            )
        out = output if output is not None else Path(f"{building}.png")
        url = make(building, address, out, scale)
    except QrError as exc:
        _fail(str(exc))
    if site_file is None:
        typer.echo(f"note: building {building!r} was not checked (no site file given)", err=True)
    typer.echo(f"{out}: {url}")
