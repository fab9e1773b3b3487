"""Points InfluxDB refused for good (400/422...) go to a JSON-lines file with the reason, never nowhere.

Each line: {"ts": "<UTC ISO time>", "status": 400, "reason": "<server message>", "line": "<line protocol>"}.
The file is fsynced before the spool forgets the points, so a crash in between can duplicate a dead letter
but never lose one. Once the cause is fixed, `meterwatch deadletter replay SITE` sends them again
(gateway/sink/replay.py), also while the daemon runs.

How the daemon and a replay share the file: both take an exclusive flock on it. A replay, holding the lock,
renames the file to `<name>.replay` and lets go; the daemon's next append, finding the path no longer
names the file it opened, opens a new one. So a dead letter is either in the file the replay took or in
the new one, never in neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True, slots=True)
class DeadLetter:
    line: str
    status: int | None
    reason: str
    kind: str = "rejected"  # reason class for the metrics: "rejected", "too_large"

    def record(self, stamp: str) -> str:
        rec = {"ts": stamp, "status": self.status, "reason": self.reason, "line": self.line}
        return json.dumps(rec, ensure_ascii=False) + "\n"


def utc_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def locked_append(path: Path) -> Iterator[IO[str]]:
    """The file at `path`, opened for appending under an exclusive flock; the one the path names once the
    lock is held (a replay may have renamed the one opened first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = path.open("a", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
                return
        finally:
            fh.close()  # closing lets go of the lock


class DeadLetters:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()  # reason class ("rejected", "too_large") -> points

    def add(self, letters: Sequence[DeadLetter]) -> None:
        """Append and fsync; raises OSError (a full disk) with nothing counted."""
        if not letters:
            return
        stamp = utc_stamp()
        with locked_append(self.path) as fh:
            fh.write("".join(d.record(stamp) for d in letters))
        self.counts.update(d.kind for d in letters)
