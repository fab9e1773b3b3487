"""Secrets and exposure (issue 8, item 7): what came from ${ENV} is never printed, credentials in URLs are
masked in logs, state files are the owner's alone whatever the umask, and a profile that shadows a shipped
one is an error unless it says so."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from gateway.observe.logs import LogfmtFormatter
from tests.helpers import free_port, wait_until

SECRET = "s3cr3t-influx-token-7f1e"
NUMBER = "98765432109"

BASE = """\
site: {{id: sec, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
{extra}
"""


def check(tmp_path: Path, extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site.yaml"
    site.write_text(BASE.format(extra=extra), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_check_never_echoes_a_secret_put_in_a_field_that_is_not_secret(tmp_path: Path) -> None:
    r = check(tmp_path, "influx: {url: '${INFLUX_TOKEN}'}", {"INFLUX_TOKEN": SECRET})
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert SECRET not in out and "***" in out, out
    assert "site.yaml:4: influx.url" in out  # still says where and what


def test_check_never_echoes_a_numeric_token(tmp_path: Path) -> None:
    r = check(tmp_path, "http: {port: '${PORT_TOKEN}'}", {"PORT_TOKEN": NUMBER})
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert NUMBER not in out and "http.port" in out, out


def test_log_lines_mask_credentials_in_urls_and_values_from_the_environment() -> None:
    from gateway.core import secrets

    secrets.register("env-only-password-31")
    record = logging.LogRecord("meterwatch.sink", logging.WARNING, __file__, 1, "write failed", None, None)
    record.fields = {  # type: ignore[attr-defined]
        "url": "http://admin:hunter2@db.example:8086",
        "detail": "auth env-only-password-31 refused",
    }
    line = LogfmtFormatter().format(record)
    assert "hunter2" not in line and "admin" not in line and "http://***@db.example:8086" in line
    assert "env-only-password-31" not in line


def test_state_dir_and_files_are_the_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site.yaml"
    site.write_text(BASE.format(extra=f"http: {{host: 127.0.0.1, port: {port}}}"), encoding="utf-8")
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(0o022),
    )

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, timeout=60, what="the daemon ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files, "the daemon created no state files"
    loose = {str(p.relative_to(state)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert all(mode == "0o600" for mode in loose.values()), loose


def test_a_profile_that_shadows_a_shipped_one_is_an_error_unless_it_says_so(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    body = (
        "name: sdm630\nmanufacturer: Local\nmodel: copy\nkind: power\n"
        "points:\n  - {{quantity: voltage_l1, address: 0, type: float32, function: input}}\n{extra}"
    )
    (profiles / "mine.yaml").write_text(body.format(extra=""), encoding="utf-8")
    r = check(tmp_path, "profiles_dir: profiles", {})
    assert r.returncode == 1 and "shipped profile" in r.stdout + r.stderr, r.stdout + r.stderr
    (profiles / "mine.yaml").write_text(body.format(extra="replaces_builtin: true\n"), encoding="utf-8")
    r = check(tmp_path, "profiles_dir: profiles", {})
    assert r.returncode == 0, r.stdout + r.stderr
