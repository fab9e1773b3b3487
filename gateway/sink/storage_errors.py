"""What an SQLite or file-system error on the spool means: the disk is full, the file is corrupt, or the
spool cannot be used as configured (locked by another process, read-only, missing directory, I/O error).

The three call for different answers (gateway/sink/spool.py): a full disk is waited out while samples are
shed, a corrupt file is moved aside, anything else stops the start with one line, because moving a healthy
file aside would lose its backlog.

Why the free space is consulted and not only the error code: on a full disk SQLite does not always say
SQLITE_FULL. Opening a WAL database whose shared-memory file cannot be sized fails with
SQLITE_IOERR_SHMSIZE ("disk I/O error"), and a write() that hits ENOSPC inside SQLite may surface as
another I/O error. An I/O error with (almost) no free space left on the disk is taken as a full disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Literal

# SQLite primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

# Below this many free bytes an I/O error is a full disk (a few SQLite pages and the WAL index).
NEARLY_FULL = 256 * 1024

Failure = Literal["disk_full", "corrupt", "unusable"]

_HINTS: dict[int, str] = {
    SQLITE_BUSY: "another process holds the spool locked; stop it (another meterwatch, an sqlite3 shell)",
    SQLITE_LOCKED: "another process holds the spool locked; stop it (another meterwatch, an sqlite3 shell)",
    SQLITE_READONLY: "the spool's file or directory is read-only; make it writable or set spool.path",
    SQLITE_CANTOPEN: "the spool's directory is missing or not writable; make it writable or set spool.path",
    SQLITE_IOERR: "the disk reports I/O errors; check it (dmesg) before restarting",
}


class SpoolCorrupt(sqlite3.DatabaseError):
    """The file opens but fails SQLite's quick_check."""


class SpoolOpenError(Exception):
    """The spool cannot be opened and is not corrupt: one line saying which file, what and what to do."""


def primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding `path` (its nearest existing
    ancestor); None when it cannot be read."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def classify(exc: BaseException, path: Path) -> Failure:
    """What `exc`, raised while using the spool at `path`, means."""
    if isinstance(exc, SpoolCorrupt):
        return "corrupt"
    code = primary_code(exc)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return "corrupt"
    if code == SQLITE_FULL or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return "disk_full"
    if code == SQLITE_IOERR or isinstance(exc, OSError):
        free = free_bytes(path)
        if free is not None and free < NEARLY_FULL:
            return "disk_full"
    return "unusable"


def describe(exc: BaseException, path: Path) -> str:
    """The error in one line: SQLite's message with its code name, and the free space when the disk is
    full (so the log says what was expected: room on that disk)."""
    name = getattr(exc, "sqlite_errorname", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    line = f"{text} ({name})" if name else text
    if classify(exc, path) == "disk_full":
        free = free_bytes(path)
        where = path.parent
        line += f"; the disk is full ({'?' if free is None else free} bytes free under {where})"
    return line


def open_error(exc: BaseException, path: Path) -> SpoolOpenError:
    """The one-line error for a spool that cannot be opened and must not be moved aside."""
    hint = _HINTS.get(primary_code(exc) or 0)
    if hint is None and isinstance(exc, OSError):
        hint = "check the spool's directory (spool.path or --state-dir)"
    msg = f"cannot open the spool {path}: {describe(exc, path)}"
    return SpoolOpenError(f"{msg}; {hint}" if hint else msg)
