"""Issue #8 item 6, the spool's part: only real corruption moves the spool aside; anything else that stops it
from opening is one line and exit 1, and the backlog stays where it is.

Real conditions: a second process holding the SQLite file's lock (locking_mode=EXCLUSIVE, as an sqlite3
shell or a backup tool may), files that are not a database or have damaged pages, and a read-only file
system (a tmpfs remounted read-only in a private user+mount namespace, see test_full_disk.SmallDisk:
chmod would not stop root).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sink.spool import PAGE_SIZE, WAL_ALLOWANCE, Spool
from gateway.sink.storage_errors import SpoolOpenError
from tests.gateway.sink.test_full_disk import SmallDisk
from tests.helpers import REPO, free_port

_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode=EXCLUSIVE")  # keeps the whole file locked, readers included
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""

SITE = """\
site: {{id: opening}}
buildings: [{{id: B1}}]
lines: [{{id: l1, transport: tcp, host: 127.0.0.1, port: {modbus}}}]
devices:
  - {{id: M1, building: B1, line: l1, unit: 1, profile: sdm630}}
influx: {{url: "http://127.0.0.1:{influx}"}}
spool: {{path: "{spool}"}}
http: {{host: 127.0.0.1, port: 0}}
"""


def lines(n: int) -> list[str]:
    return [f"power,device=d v={i}.0 {i}" for i in range(n)]


def backlog(path: Path, n: int) -> None:
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    sp.append(lines(n))
    sp.close()


def spooled(path: Path) -> list[str]:
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    try:
        return [p.line for p in sp.peek(10**6)]
    finally:
        sp.close()


def write_site(directory: Path, spool: Path) -> Path:
    site = directory / "site.yaml"
    site.write_text(SITE.format(modbus=free_port(), influx=free_port(), spool=spool), encoding="utf-8")
    return site


def run_argv(site: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(state)]


def assert_one_line_exit_1(done: subprocess.CompletedProcess[str], *words: str) -> str:
    err = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(w in err[0] for w in words), err[0]
    return err[0]


class Locker:
    """Another process holding the spool's file locked until `release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Locker]:
    """A spool with 100 points, locked by another process."""
    path = tmp_path / "spool" / "spool.sqlite"
    backlog(path, 100)
    locker = Locker(path)
    try:
        yield locker
    finally:
        locker.release()


def test_a_spool_locked_by_another_process_is_an_error_not_corruption(locked: Locker) -> None:
    with pytest.raises(SpoolOpenError) as caught:
        Spool(locked.path, max_bytes=10**9, max_age=1e9)
    msg = str(caught.value)
    assert str(locked.path) in msg and "database is locked" in msg and "another process" in msg, msg
    assert "\n" not in msg
    assert [p.name for p in locked.path.parent.iterdir() if "corrupt" in p.name] == []
    locked.release()
    assert spooled(locked.path) == lines(100)  # the backlog, whole, once the other process is gone


def test_run_on_a_locked_spool_says_so_in_one_line_and_the_backlog_is_kept(
    tmp_path: Path, locked: Locker
) -> None:
    site = write_site(tmp_path, locked.path)
    done = subprocess.run(
        run_argv(site, tmp_path / "state"), capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert_one_line_exit_1(done, "meterwatch run: cannot open the spool", str(locked.path), "locked")
    locked.release()
    assert spooled(locked.path) == lines(100)
    assert [p.name for p in locked.path.parent.iterdir() if "corrupt" in p.name] == []


def _damage_a_page(path: Path) -> None:
    """Overwrite the middle of the file (b-tree pages of the points table) with garbage."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the file's page size, from its header
    assert len(data) > 8 * page, len(data)
    mid = (len(data) // page // 2) * page
    data[mid : mid + 2 * page] = b"\xa5" * (2 * page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not_a_database", "damaged_pages"])
def test_real_corruption_is_moved_aside_and_a_new_spool_starts(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "spool.sqlite"
    if damage == "not_a_database":
        path.write_bytes(b"this is not an SQLite database\n" * 400)
    else:
        backlog(path, 3000)
        _damage_a_page(path)
    before = path.read_bytes()
    sp = Spool(path, max_bytes=10**9, max_age=1e9)
    assert sp.stats.quarantined == 1 and sp.stats.points == 0
    [moved] = list(tmp_path.glob("spool.sqlite.corrupt-*"))
    assert moved.read_bytes() == before  # kept as it was, for manual recovery
    sp.append(lines(2))
    assert [p.line for p in sp.peek(10)] == lines(2)
    sp.close()


def test_read_only_spool_or_state_dir_is_one_line_and_nothing_moves(tmp_path: Path) -> None:
    disk = SmallDisk(tmp_path / "ro", "4m").start()
    try:
        spool = disk.mountpoint / "spool.sqlite"
        disk.python(
            "import sys; from pathlib import Path; from gateway.sink.spool import Spool; "
            "sp = Spool(Path(sys.argv[1]), 10**9, 1e9); "
            "sp.append([f'power,device=d v={i}.0 {i}' for i in range(50)]); sp.close()",
            str(spool),
        )
        disk.run("mount", "-o", "remount,ro", str(disk.mountpoint))
        before = disk.listing()

        site = write_site(tmp_path, spool)
        done = subprocess.run(disk.argv(*run_argv(site, tmp_path / "state")), capture_output=True, text=True)
        assert_one_line_exit_1(done, "meterwatch run: cannot open the spool", str(spool))

        done = subprocess.run(
            disk.argv(*run_argv(site, disk.mountpoint / "state")), capture_output=True, text=True
        )
        assert_one_line_exit_1(done, "meterwatch run: cannot write in the state dir", "Read-only file system")
        assert disk.listing() == before == ["spool.sqlite"]
    finally:
        disk.stop()


def test_a_new_file_takes_the_larger_page_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """The page size applies to new files; the WAL's checkpoint threshold follows each file's page size."""
    fresh = Spool(tmp_path / "new.sqlite", max_bytes=10**9, max_age=1e9)
    assert fresh.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    assert fresh.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_ALLOWANCE // PAGE_SIZE
    fresh.close()
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size=4096")
    db.execute("CREATE TABLE t (x)")  # the file exists with 4 KiB pages
    db.close()
    sp = Spool(old, max_bytes=10**9, max_age=1e9)
    assert sp.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert sp.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_ALLOWANCE // 4096
    sp.append(lines(3))
    assert [p.line for p in sp.peek(10)] == lines(3)
    sp.close()
