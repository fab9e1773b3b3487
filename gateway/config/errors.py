"""How a site-file problem is reported: file, line, field path and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config.yamlsrc import Loc
from gateway.core import secrets


@dataclass(frozen=True)
class ConfigIssue:
    path: Path
    line: int | None
    loc: Loc
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        field = format_loc(self.loc)
        text = f"{where}: {field}: {self.message}" if field else f"{where}: {self.message}"
        return secrets.mask(text)  # a secret in the wrong field is named by its place, never shown


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
