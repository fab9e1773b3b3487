"""Log a bad input once per cause, count every occurrence: bad input is reported and skipped, never fatal."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class OnceLog:
    logger: logging.Logger
    seen: set[tuple[str, ...]] = field(default_factory=set)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)

    def warn(self, key: tuple[str, ...], msg: str, *args: object) -> bool:
        """Counts `key`; logs `msg` only the first time `key` is seen. Returns True when it logged."""
        self.counts[key] += 1
        if key in self.seen:
            return False
        self.seen.add(key)
        self.logger.warning(msg + " (further occurrences are counted, not logged)", *args)
        return True

    def forget(self, key: tuple[str, ...]) -> None:
        """Call when the cause went away, so its next occurrence is logged again."""
        self.seen.discard(key)
