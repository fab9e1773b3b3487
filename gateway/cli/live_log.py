"""Log lines shown under the live table instead of written across it.

While the rich live table redraws itself, a log handler writing to the terminal would print into the middle
of it (the handler holds the real stderr, which rich's redirect cannot catch). `LogTail.capture()` swaps the
root logger's handlers for one that keeps the last few records, and the view renders them below the table.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.core import secrets

KEEP = 6


class LogTail(logging.Handler):
    """The last `keep` log records as short lines: "10:03:21 warning modbus: device down device=B2-shop"."""

    def __init__(self, tz: ZoneInfo, keep: int = KEEP) -> None:
        super().__init__()
        self.tz = tz
        self.lines: deque[str] = deque(maxlen=keep)
        self.total = 0
        self._guard = threading.Lock()  # drivers log from their own threads (paho)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.short(record)
        except Exception:
            self.handleError(record)
            return
        with self._guard:
            self.lines.append(line)
            self.total += 1

    def short(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, self.tz).strftime("%H:%M:%S")
        name = record.name.removeprefix("meterwatch.")
        text = f"{when} {record.levelname.lower()} {name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += "".join(f" {k}={v}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {exc})"
        return secrets.mask(text)

    def recent(self) -> list[str]:
        with self._guard:
            return list(self.lines)

    @contextlib.contextmanager
    def capture(self) -> Iterator[LogTail]:
        """Route every log record here (and nowhere else) for the duration, at the root logger's level."""
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers[:] = [self]
        try:
            yield self
        finally:
            root.handlers[:] = saved
