"""Send dead letters again once their cause is fixed (`meterwatch deadletter replay`), while the daemon runs.

Steps, each safe to interrupt:
1. take `<file>.replay.lock` (one replay at a time);
2. claim: under the daemon's lock on the dead-letter file, rename it to `<file>.replay` (or append it to
   a `.replay` left by an interrupted replay); the daemon starts a new file with its next dead letter;
3. send the claimed points in batches, halving a refused batch down to the single points refused again;
4. append what was not sent (refused again, with the new answer; or not tried because InfluxDB stopped
   answering) to the dead-letter file, under the daemon's lock, then delete `<file>.replay`.
An interruption before 4 leaves `<file>.replay`, which the next replay sends again: a point may reach
InfluxDB twice (it keeps one: same series, same timestamp), none is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sink.deadletter import DeadLetter, locked_append, utc_stamp
from gateway.sink.forwarder import Writer
from gateway.sink.influx import WriteOutcome

DEADLETTER_NAME = "deadletter.jsonl"


class ReplayBusy(Exception):
    """Another replay holds the lock."""


@dataclass
class Letter:
    """One record of the file: its line protocol, or the raw text when the record cannot be read (kept)."""

    raw: str
    line: str | None


@dataclass
class ReplayResult:
    path: Path
    total: int = 0  # points found
    sent: int = 0
    refused: list[tuple[Letter, WriteOutcome]] = field(default_factory=list)  # refused again
    unsent: list[Letter] = field(default_factory=list)  # not tried (stopped) or unreadable
    stopped: WriteOutcome | None = None  # the answer that stopped the replay (unreachable, config, ...)

    @property
    def kept(self) -> int:
        return len(self.refused) + len(self.unsent)


@contextlib.contextmanager
def _replay_lock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".replay.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReplayBusy(f"another replay of {path} is running ({lock} is locked)") from None
        yield
    finally:
        os.close(fd)


def _claim(path: Path) -> Path:
    """Move the dead letters out of the daemon's way into `<file>.replay`; returns that path."""
    work = path.with_name(path.name + ".replay")
    if not path.exists():
        return work
    with locked_append(path) as fh:
        if work.exists():  # an interrupted replay's: both are sent now
            with work.open("a", encoding="utf-8") as out:
                out.write(path.read_text(encoding="utf-8"))
                out.flush()
                os.fsync(out.fileno())
            path.unlink()
        else:
            os.rename(path, work)
        fh.flush()
    return work


def _read(work: Path) -> list[Letter]:
    letters: list[Letter] = []
    if not work.exists():
        return letters
    for raw in work.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)["line"]
        except (ValueError, KeyError, TypeError):
            line = None
        letters.append(Letter(raw, line if isinstance(line, str) else None))
    return letters


def _settle(writer: Writer, batch: Sequence[Letter], result: ReplayResult) -> bool:
    """Send one batch, halving a refused one; False once InfluxDB stops taking anything (the rest of the
    batch is then in result.unsent)."""
    outcome = writer.write([str(x.line) for x in batch])
    if outcome.kind == "ok":
        result.sent += len(batch)
        return True
    if outcome.kind in ("rejected", "too_large"):
        if len(batch) == 1:
            result.refused.append((batch[0], outcome))
            return True
        half = len(batch) // 2
        if not _settle(writer, batch[:half], result):
            result.unsent.extend(batch[half:])
            return False
        return _settle(writer, batch[half:], result)
    result.stopped = outcome
    result.unsent.extend(batch)
    return False


def _keep(path: Path, result: ReplayResult) -> None:
    """Put what was not sent back into the dead-letter file, the refused ones with their new answer."""
    if not result.kept:
        return
    stamp = utc_stamp()
    text = "".join(
        DeadLetter(str(x.line), o.status, o.message, o.kind).record(stamp) for x, o in result.refused
    )
    text += "".join(x.raw + "\n" for x in result.unsent)
    with locked_append(path) as fh:
        fh.write(text)


def replay(path: Path, writer: Writer, batch_size: int) -> ReplayResult:
    """Send the dead letters of `path` through `writer`; raises ReplayBusy when another replay runs."""
    result = ReplayResult(path)
    if not path.parent.is_dir():  # no state dir: the daemon never wrote a dead letter there
        return result
    with _replay_lock(path):
        work = _claim(path)
        letters = _read(work)
        result.total = len(letters)
        sendable = [x for x in letters if x.line is not None]
        result.unsent.extend(x for x in letters if x.line is None)
        for start in range(0, len(sendable), batch_size):
            if not _settle(writer, sendable[start : start + batch_size], result):
                result.unsent.extend(sendable[start + batch_size :])
                break
        _keep(path, result)
        with contextlib.suppress(FileNotFoundError):
            work.unlink()
    return result
