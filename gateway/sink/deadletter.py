"""Points InfluxDB refused for good (400/422...) go to a JSON-lines file with the reason, never nowhere.

Each line: {"ts": "<UTC ISO time>", "status": 400, "reason": "<server message>", "line": "<line protocol>"}.
The file is fsynced before the spool forgets the points, so a crash in between can duplicate a dead letter
but never lose one. Re-send after fixing the cause with e.g.
`jq -r .line deadletter.jsonl | curl --data-binary @- "$URL/api/v2/write?bucket=...&precision=us"`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


class DeadLetters:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()  # reason class ("rejected", "too_large") -> points

    def add(self, lines: Sequence[str], status: int | None, reason: str, kind: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.path.open("a", encoding="utf-8") as fh:
            for line in lines:
                rec = {"ts": stamp, "status": status, "reason": reason, "line": line}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.counts[kind] += len(lines)
