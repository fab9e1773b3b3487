"""`meterwatch qr`: the QR code of a building's public page, read back with zbarimg when it is installed
(Debian's zbar-tools), else checked as a PNG of the expected size whose segno matrix holds the URL."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import segno

from gateway.cli.qr import BORDER, DEFAULT_SCALE, ERROR_LEVEL, building_url
from tests.helpers import REPO

SITE = """\
site: {id: qrtest, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 40}
  - {id: B-2, households: 30}
notify:
  links: {base_url: "https://gw.example.org/mw/"}
"""


def meterwatch(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and the chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc, "IHDR checksum"
    width, height = struct.unpack(">II", body[:8])
    return width, height


def png_modules(path: Path, scale: int, border: int) -> list[list[int]]:
    """The dark (1) and light (0) modules drawn in a 1-bit grayscale PNG as segno writes it: the pixel at
    the centre of each module, quiet zone left out."""
    data = path.read_bytes()
    width, height = png_size(path)
    assert data[24:26] == bytes([1, 0]), "expected 1-bit grayscale"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows: list[bytes] = []
    prior = bytes(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        # PNG's row filters (bytes per pixel: 1 at this depth): none, sub, up, average, paeth
        for i in range(stride):
            a = cur[i - 1] if i else 0
            b, c = prior[i], prior[i - 1] if i else 0
            if kind == 1:
                cur[i] = (cur[i] + a) & 0xFF
            elif kind == 2:
                cur[i] = (cur[i] + b) & 0xFF
            elif kind == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(cur))
        prior = bytes(cur)

    def dark(x: int, y: int) -> int:
        return 0 if rows[y][x // 8] >> (7 - x % 8) & 1 else 1  # grayscale 1 = white

    n = width // scale - 2 * border
    half = scale // 2
    return [
        [dark((border + c) * scale + half, (border + r) * scale + half) for c in range(n)] for r in range(n)
    ]


def decode(path: Path) -> str | None:
    """The text of the QR code in `path` by zbarimg, or None when zbarimg is not installed."""
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        return None
    r = subprocess.run([zbarimg, "-q", "--raw", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def expected_matrix(url: str) -> list[list[int]]:
    code = segno.make_qr(url, error=ERROR_LEVEL)
    return [list(row) for row in code.matrix]


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return path


def test_qr_of_a_building_holds_its_page_under_the_sites_base_url(site_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "b1.png"
    r = meterwatch("qr", "B1", "-o", str(out), str(site_file))
    assert r.returncode == 0, r.stderr
    url = "https://gw.example.org/mw/b/B1"  # the base's trailing slash dropped, one slash before b/
    assert url in r.stdout
    code = segno.make_qr(url, error=ERROR_LEVEL)
    side = (code.symbol_size(scale=1, border=0)[0] + 2 * BORDER) * DEFAULT_SCALE
    assert png_size(out) == (side, side)
    decoded = decode(out)
    if decoded is not None:
        assert decoded == url
    # whatever reads it back: the modules drawn are segno's code of the URL
    assert png_modules(out, DEFAULT_SCALE, BORDER) == expected_matrix(url)
    assert building_url("https://gw.example.org/mw/", "B1") == url


def test_base_url_option_wins_and_svg_by_extension(site_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "b2.svg"
    r = meterwatch("qr", "B-2", "-o", str(out), str(site_file), "--base-url", "http://192.0.2.7:9464")
    assert r.returncode == 0, r.stderr
    assert "http://192.0.2.7:9464/b/B-2" in r.stdout
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml") or "<svg" in out.read_text()


def test_without_a_site_the_base_url_alone_is_enough_and_the_building_is_not_checked(tmp_path: Path) -> None:
    r = meterwatch("qr", "B7", "--base-url", "https://gw.example.org", "--scale", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "B7.png"  # the default output name, in the working directory
    assert out.exists()
    assert "not checked" in r.stderr
    assert png_modules(out, 4, BORDER) == expected_matrix("https://gw.example.org/b/B7")
    decoded = decode(out)
    if decoded is not None:
        assert decoded == "https://gw.example.org/b/B7"


def test_unknown_building_is_a_clear_error_and_writes_nothing(site_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "b9.png"
    r = meterwatch("qr", "B9", "-o", str(out), str(site_file))
    assert r.returncode == 1
    assert "unknown building 'B9'" in r.stderr and "B1, B-2" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_no_address_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "nolinks.yaml"
    site.write_text("site: {id: s}\nbuildings: [{id: B1}]\n", encoding="utf-8")
    out = tmp_path / "b1.png"
    r = meterwatch("qr", "B1", "-o", str(out), str(site))
    assert r.returncode == 1
    assert "no notify.links.base_url" in r.stderr and "--base-url" in r.stderr
    assert not out.exists()
    r = meterwatch("qr", "B1", "-o", str(out))
    assert r.returncode == 1 and "no site file was given" in r.stderr


@pytest.mark.parametrize(
    ("base", "why"),
    [("ftp://gw.example.org", "http:// or https://"), ("https://gw.example.org/?x=1", "query")],
)
def test_a_bad_base_url_is_refused(tmp_path: Path, base: str, why: str) -> None:
    r = meterwatch("qr", "B1", "-o", str(tmp_path / "x.png"), "--base-url", base)
    assert r.returncode == 1
    assert r.stderr.startswith("meterwatch qr: --base-url: ") and why in r.stderr


def test_unwritable_output_and_unknown_format_are_one_line_errors(tmp_path: Path) -> None:
    base = ("--base-url", "https://gw.example.org")
    r = meterwatch("qr", "B1", "-o", str(tmp_path / "missing" / "b1.png"), *base)
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr
    r = meterwatch("qr", "B1", "-o", str(tmp_path / "b1.gif"), *base)
    assert r.returncode == 1 and ".gif" in r.stderr and "use .png or .svg" in r.stderr
