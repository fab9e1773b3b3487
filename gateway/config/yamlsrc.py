"""Load YAML while remembering where every value came from, so config errors can name file:line.

Also substitutes `${NAME}` (and `${NAME:-default}`) from the environment in string scalars: secrets stay
out of the site file and are never echoed back.

Hostile or broken input is refused with one file:line error instead of exhausting memory, time or the
Python stack. The limits are far above what a site, scenario or replay-mapping file needs (the example
compound, 11 devices, is 4 KB, 360 values and 6 levels deep, scalars counted):
- MAX_BYTES, 1 MiB: the file is read only that far (a FIFO or /dev/zero cannot stall the load).
- MAX_DEPTH, 64 levels (the root and scalars count), aliases expanded: PyYAML's composer (3 Python
  frames a level) and `_convert` (2) recurse, so 50,000 nested brackets overflowed the stack; checked
  before each descent.
- MAX_ALIAS_VALUES, 10,000 values reached through aliases: an alias is expanded into a full copy when
  converted, so nine levels of nine aliases ("billion laughs", 3.6 KB) mean 9**9 values. A site file
  uses aliases to share a few small blocks (a `match:` of 3-5 values, a few dozen times), i.e. hundreds.
  Each alias is charged what it expands to (known once its anchor's node is complete), so the bomb is
  refused after composing a few hundred nodes.
- MAX_VALUES, 50,000 values in all (aliases expanded): the pure-Python parser costs about 50 us and
  ~1 KB per value, so 1 MiB of `0,0,0,...` (500,000 values) took minutes and 350 MB; 50,000 values is
  ~1,500 devices.
An alias inside the collection it names (`&a [*a]`, a cycle) is refused too: it cannot be expanded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.core import secrets

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


MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 10_000
MAX_VALUES = 50_000


def load(path: Path, env: dict[str, str] | None = None) -> LoadedYaml:
    env = dict(os.environ) if env is None else env
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlSyntaxError(path, None, f"cannot read the file: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:
        raise YamlSyntaxError(
            path,
            raw[:MAX_BYTES].count(b"\n") + 1,
            f"the file is larger than {MAX_BYTES // 1024 // 1024} MiB (passed on this line); "
            "a site file is a few KB",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlSyntaxError(path, line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines
    try:
        loader = _GuardedLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character; PyYAML checks the whole text first
        line = text[: exc.position].count("\n") + 1
        raise YamlSyntaxError(path, line, f"control character #x{exc.character:02x} is not allowed") from None
    try:
        node = loader.get_single_node()
    except _Refused as exc:
        raise YamlSyntaxError(path, exc.line, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise YamlSyntaxError(path, mark.line + 1 if mark else None, f"YAML syntax: {exc.problem}") from exc
    finally:
        loader.dispose()
    out = LoadedYaml(path=path, data=None)
    if node is None:
        out.data = {}
        return out
    out.data = _convert(node, (), out, env)
    return out


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message
        super().__init__(f"{line}: {message}")


class _GuardedLoader(yaml.SafeLoader):
    """The pure-Python SafeLoader (its composer can be hooked; libyaml's cannot) with a composer that
    counts values, aliases expanded, and nesting depth, and refuses past the limits before it descends."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # level of the node being composed; the root is 1
        self._deepest = 0  # deepest level reached (aliases expanded) since the innermost open anchor began
        self._values = 0
        self._alias_values = 0
        self._anchored: dict[str, tuple[int, int]] = {}  # complete anchor -> (values, levels below it)
        self._open: set[str] = set()  # anchors whose node is being composed

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        anchor: str | None = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open:
                raise _Refused(line, f"alias *{anchor} is inside the collection it names (a cycle)")
            if anchor in self._anchored:
                values, below = self._anchored[anchor]
                self._alias_values += values
                if self._alias_values > MAX_ALIAS_VALUES:
                    raise _Refused(
                        line,
                        f"aliases expand to more than {MAX_ALIAS_VALUES} values here (*{anchor} is "
                        f"{values}); a YAML alias bomb? Aliases are for sharing a few small blocks",
                    )
                self._count(values, line)
                self._reach(self._depth + 1 + below, line)
            return super().compose_node(parent, index)  # an undefined alias is PyYAML's error
        self._depth += 1
        self._reach(self._depth, line)
        self._count(1, line)
        if anchor is None:
            node = super().compose_node(parent, index)
        else:
            values_before, outer_deepest = self._values, self._deepest
            self._deepest = self._depth
            self._open.add(anchor)
            node = super().compose_node(parent, index)
            self._open.discard(anchor)
            self._anchored[anchor] = (self._values - values_before + 1, self._deepest - self._depth)
            self._deepest = max(outer_deepest, self._deepest)
        self._depth -= 1
        return node

    def _count(self, values: int, line: int) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise _Refused(
                line, f"more than {MAX_VALUES} values (aliases expanded); too large for a site file"
            )

    def _reach(self, level: int, line: int) -> None:
        if level > MAX_DEPTH:
            raise _Refused(
                line,
                f"nested deeper than {MAX_DEPTH} levels (aliases expanded); a site file needs fewer than 10",
            )
        self._deepest = max(self._deepest, level)


def _convert(node: yaml.Node, loc: Loc, out: LoadedYaml, env: dict[str, str]) -> Any:
    out.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSyntaxError(
                    out.path,
                    key_node.start_mark.line + 1,
                    "a key must be a plain value, not a list or mapping",
                )
            merge = key_node.tag == "tag:yaml.org,2002:merge"  # SafeLoader cannot construct it
            key = "<<" if merge else _scalar(key_node, out.path)  # as YAML would (ints stay ints, etc.)
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
    value = _scalar(node, out.path)
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, loc, out, env)
    return value


def _scalar(node: yaml.Node, path: Path) -> Any:
    """The value of a scalar as SafeLoader constructs it; a value its tag cannot take (`!!int abc`, an int
    of 5,000 digits, `!!python/name:...`) is a file:line error rather than a traceback."""
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        text = str(node.value)
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise YamlSyntaxError(path, node.start_mark.line + 1, f"cannot read {shown!r} as {tag}") from None


def _substitute(value: str, loc: Loc, out: LoadedYaml, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            secrets.register(env[name])  # never printed again: errors and logs mask it
            return env[name]
        if default is not None:
            return default
        out.issues.append(SourceIssue(loc, f"environment variable {name} is not set (used as ${{{name}}})"))
        return ""

    return _ENV.sub(repl, value)
