"""Values that must never be printed: what the site file took from `${ENV}`, and credentials in URLs.

The site file's loader registers every value it substituted from the environment; config errors and log
lines pass through `mask`, which replaces each registered value with `***` and the user:password part of
any URL with `***@`. A value shorter than MIN_LEN is not registered: masking every "1" or "on" would make
messages unreadable, and a secret that short is no secret.
"""

from __future__ import annotations

import re
import threading

MIN_LEN = 4
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(value: str) -> None:
    global _pattern
    if len(value) < MIN_LEN:
        return
    with _lock:
        if value in _values:
            return
        _values.add(value)
        # longest first, so a secret that contains another is masked whole
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def mask(text: str) -> str:
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    return _URL_USERINFO.sub(r"\1***@", text)
