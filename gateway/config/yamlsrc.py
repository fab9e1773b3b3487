"""Load YAML while remembering where every value came from, so config errors can name file:line.

Also substitutes `${NAME}` (and `${NAME:-default}`) from the environment in string scalars: secrets stay
out of the site file and are never echoed back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class SourceIssue:
    loc: Loc
    message: str


@dataclass
class LoadedYaml:
    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    issues: list[SourceIssue] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """Line (1-based) of the deepest part of `loc` that exists in the file."""
        for n in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return None


class YamlSyntaxError(Exception):
    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line or '?'}: {message}")


def load(path: Path, env: dict[str, str] | None = None) -> LoadedYaml:
    env = dict(os.environ) if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlSyntaxError(path, None, f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise YamlSyntaxError(path, line, f"YAML syntax: {exc.problem}") from exc
    out = LoadedYaml(path=path, data=None)
    if node is None:
        out.data = {}
        return out
    out.data = _convert(node, (), out, env)
    return out


def _convert(node: yaml.Node, loc: Loc, out: LoadedYaml, env: dict[str, str]) -> Any:
    out.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(  # construct the key as YAML would (ints stay ints, etc.)
                ""
            ).construct_object(key_node, deep=True)
            if key == "<<":
                raise YamlSyntaxError(
                    out.path, key_node.start_mark.line + 1, "YAML merge keys are not supported"
                )
            if key in result:
                raise YamlSyntaxError(out.path, key_node.start_mark.line + 1, f"duplicate key {key!r}")
            result[key] = _convert(value_node, (*loc, key), out, env)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(child, (*loc, i), out, env) for i, child in enumerate(node.value)]
    value = yaml.SafeLoader("").construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, loc, out, env)
    return value


def _substitute(value: str, loc: Loc, out: LoadedYaml, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        out.issues.append(SourceIssue(loc, f"environment variable {name} is not set (used as ${{{name}}})"))
        return ""

    return _ENV.sub(repl, value)
