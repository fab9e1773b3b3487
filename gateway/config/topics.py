"""Topic templates: `sensors/{building}/{device}/{quantity}` names the levels a reading's identity comes from.

A template is an MQTT topic filter whose `+` levels may carry a name. The broker gets the plain filter
(`sensors/+/+/+`); a received topic is matched back against the template to extract the names. Plain `+`
and a trailing `#` work as in MQTT and capture nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PLACEHOLDERS = ("building", "device", "quantity", "channel")
_NAME = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

LevelKind = Literal["literal", "name", "plus", "hash"]


class TemplateError(ValueError):
    """A template that is not a valid MQTT filter or names an unknown placeholder."""


@dataclass(frozen=True, slots=True)
class Level:
    kind: LevelKind
    text: str  # the literal text, or the placeholder name


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    text: str
    levels: tuple[Level, ...]

    @property
    def filter(self) -> str:
        """The MQTT subscription filter: every named level becomes `+`."""
        return "/".join(
            "+" if lv.kind in ("name", "plus") else "#" if lv.kind == "hash" else lv.text
            for lv in self.levels
        )

    @property
    def names(self) -> frozenset[str]:
        return frozenset(lv.text for lv in self.levels if lv.kind == "name")

    def match(self, topic: str) -> dict[str, str] | None:
        """The named levels of `topic`, or None when the topic does not match this template's filter."""
        # MQTT: a filter starting with a wildcard does not match topics starting with $ ($SYS, ...).
        if topic.startswith("$") and self.levels[0].kind != "literal":
            return None
        parts = topic.split("/")
        found: dict[str, str] = {}
        for i, lv in enumerate(self.levels):
            if lv.kind == "hash":
                return found  # matches the parent level too ("a/#" matches "a"), as MQTT says
            if i >= len(parts):
                return None
            if lv.kind == "literal":
                if parts[i] != lv.text:
                    return None
            elif lv.kind == "name":
                found[lv.text] = parts[i]
        return found if len(parts) == len(self.levels) else None


def parse_template(text: str) -> TopicTemplate:
    """Parse a template or a plain filter. Raises TemplateError saying what is wrong and what is expected."""
    if not text:
        raise TemplateError("expected a topic filter such as sensors/{building}/{device}/{quantity}")
    if len(text.encode("utf-8")) > 65535:
        raise TemplateError("a topic filter is at most 65535 bytes")
    levels: list[Level] = []
    raw = text.split("/")
    for i, part in enumerate(raw):
        if part == "#":
            if i != len(raw) - 1:
                raise TemplateError(f"'#' must be the last level of {text!r}")
            levels.append(Level("hash", "#"))
        elif part == "+":
            levels.append(Level("plus", "+"))
        elif m := _NAME.match(part):
            name = m.group(1)
            if name not in PLACEHOLDERS:
                raise TemplateError(
                    f"unknown placeholder {{{name}}} in {text!r}; expected one of "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                )
            if name in (lv.text for lv in levels if lv.kind == "name"):
                raise TemplateError(f"placeholder {{{name}}} appears twice in {text!r}")
            levels.append(Level("name", name))
        else:
            for bad in ("#", "+", "{", "}"):
                if bad in part:
                    raise TemplateError(
                        f"level {part!r} of {text!r}: {bad!r} is allowed only as a whole level "
                        "('+', '#' or a placeholder such as {device})"
                    )
            if "\x00" in part:
                raise TemplateError(f"{text!r} contains a NUL character")
            levels.append(Level("literal", part))
    return TopicTemplate(text=text, levels=tuple(levels))
