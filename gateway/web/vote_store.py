"""The residents' votes on an all-clear, in the incident store's `votes` table.

    votes(token_id TEXT PRIMARY KEY, incident_id INTEGER NOT NULL, rating TEXT NOT NULL,
          comment TEXT NOT NULL, at REAL NOT NULL)

`token_id` is the SHA-256 (hex) of the link's token: a link has one spelling (gateway/respond/links.py),
so one link is one row whoever opens it and however often, and the token itself (which would let anyone
who reads the file vote) is not kept. Nothing else is stored: no address, no name, no browser; the
comment is what the resident chose to type. The monthly review (gateway/review/data.py) reads this table.

A plain SQLite write beside the detector, not a Detector.call: a vote changes nothing the engine, the
notice policy or the dispatcher hold, so it has no place in their transaction order. The insert is one
statement (`ON CONFLICT DO NOTHING`) in its own short transaction; SQLite's lock and the busy timeout
serialise it with the detector's rounds (WAL), exactly as the outbox's sender threads already write.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Rating = Literal["satisfied", "neutral", "unsatisfied"]
RATINGS: tuple[str, ...] = get_args(Rating)
COMMENT_MAX = 500  # characters

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes(
    token_id TEXT PRIMARY KEY,
    incident_id INTEGER NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT NOT NULL,
    at REAL NOT NULL
)
"""
BUSY_MS = 30_000  # a detection round's transaction is short; waiting for it beats refusing a vote


def token_id(token: str) -> str:
    """What the table keeps of a link: the SHA-256 of its token, as 64 hex characters."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class Vote:
    incident_id: int
    rating: str
    comment: str
    at: float


@dataclass(frozen=True, slots=True)
class Cast:
    """The outcome of casting a vote: `counted` False when the link had voted already; `vote` is the one
    that counts (the first)."""

    counted: bool
    vote: Vote


class VoteStore:
    """The votes of one incident store file; safe to use from any thread (a connection per call)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            db.execute("PRAGMA synchronous=FULL")  # a vote answered as counted survives a power cut
            yield db
        finally:
            db.close()

    def cast(self, token: str, incident_id: int, rating: str, comment: str, now: float) -> Cast:
        """Record the vote of a verified link, unless that link has voted: then the first vote stands.
        ValueError for a rating not in RATINGS or a comment longer than COMMENT_MAX (nothing written)."""
        if rating not in RATINGS:
            raise ValueError(f"rating {rating!r}: expected one of {', '.join(RATINGS)}")
        if len(comment) > COMMENT_MAX:
            raise ValueError(f"comment of {len(comment)} characters: at most {COMMENT_MAX}")
        tid = token_id(token)
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(SCHEMA)
                cur = db.execute(
                    "INSERT INTO votes(token_id, incident_id, rating, comment, at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(token_id) DO NOTHING",
                    (tid, incident_id, rating, comment, now),
                )
                counted = cur.rowcount == 1
                row = db.execute(
                    "SELECT incident_id, rating, comment, at FROM votes WHERE token_id = ?", (tid,)
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return Cast(counted, Vote(int(row[0]), str(row[1]), str(row[2]), float(row[3])))

    def find(self, token: str) -> Vote | None:
        """The vote a link has cast, or None."""
        with self._conn() as db:
            exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'votes'")
            if exists.fetchone() is None:
                return None
            row = db.execute(
                "SELECT incident_id, rating, comment, at FROM votes WHERE token_id = ?", (token_id(token),)
            ).fetchone()
        return None if row is None else Vote(int(row[0]), str(row[1]), str(row[2]), float(row[3]))
