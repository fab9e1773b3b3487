"""Field paths of JSON payloads, as written in the site file: `data.pressure`, `values[0]`, `[0].v`."""

from __future__ import annotations

import re

_KEY = re.compile(r"[^.\[\]]+")
_DOT_KEY = re.compile(r"\.([^.\[\]]+)")
_INDEX = re.compile(r"\[(\d+)\]")


def parse_steps(text: str) -> tuple[str | int, ...]:
    """The keys and indexes of `a.b[0].c`. Raises ValueError with what is expected."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(text):
        if pos == 0 and (m := _KEY.match(text)):
            steps.append(m.group(0))
        elif steps and (m := _DOT_KEY.match(text, pos)):
            steps.append(m.group(1))
        elif m := _INDEX.match(text, pos):
            steps.append(int(m.group(1)))
        else:
            break
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(
            f"invalid field path {text!r}: expected keys joined by dots with optional [index], "
            "e.g. data.pressure or values[0]"
        )
    return tuple(steps)
