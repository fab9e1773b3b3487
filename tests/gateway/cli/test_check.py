from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def meterwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_check_on_a_broken_file_names_file_line_and_field(tmp_path: Path) -> None:
    site = tmp_path / "broken.yaml"
    site.write_text(
        "site: {id: s1}\n"
        "buildings: [{id: B1}]\n"
        "lines:\n"
        "  - {id: l1, transport: tcp, host: 127.0.0.1, port: 70000}\n"
        "devices:\n"
        "  - {id: m1, building: B9, line: l1, unit: 1, profile: sdm630}\n"
    )
    r = meterwatch("check", str(site))
    assert r.returncode == 1
    assert f"{site}:4: lines[0].port: " in r.stderr
    assert "65535" in r.stderr and "70000" in r.stderr


def test_check_reports_cross_reference_after_the_schema_passes(tmp_path: Path) -> None:
    site = tmp_path / "broken.yaml"
    site.write_text(
        "site: {id: s1}\n"
        "buildings: [{id: B1}]\n"
        "lines:\n"
        "  - {id: l1, transport: tcp, host: 127.0.0.1, port: 5020}\n"
        "devices:\n"
        "  - {id: m1, building: B9, line: l1, unit: 1, profile: sdm630}\n"
    )
    r = meterwatch("check", str(site))
    assert r.returncode == 1
    assert f"{site}:6: devices[0].building: unknown building 'B9'" in r.stderr


def test_schema_is_json_schema_of_the_site_file() -> None:
    r = meterwatch("schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["title"] == "meterwatch site file"
    assert {"site", "buildings", "lines", "devices"} <= set(schema["properties"])
