"""Loading a site file: YAML with positions, validation, cross-references, each problem named by file:line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.devices import Device
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.modbus import Line
from gateway.config.profile import Profile, builtin_profiles, load_profile_file
from gateway.config.rules import RULE_KINDS
from gateway.config.schema import SiteConfig
from gateway.config.site import Building, SupplyDomain
from gateway.config.validators import cross_check
from gateway.config.yamlsrc import Loc, YamlSyntaxError, load


@dataclass(frozen=True)
class Site:
    """A validated site file plus what it refers to (profiles), ready for the runtime."""

    config: SiteConfig
    path: Path
    profiles: dict[str, Profile]

    def device(self, device_id: str) -> Device:
        for d in self.config.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def line(self, line_id: str) -> Line:
        for line in self.config.lines:
            if line.id == line_id:
                return line
        raise KeyError(line_id)

    def devices_on(self, line_id: str) -> list[Device]:
        return [d for d in self.config.devices if d.line == line_id]

    def domains(self) -> dict[str, tuple[Building, SupplyDomain]]:
        return {d.id: (b, d) for b in self.config.buildings for d in b.domains}


def _pydantic_message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling and the output of `meterwatch schema`)"
    if err["type"] == "missing":
        return "required field is missing"
    inp = err.get("input")
    if err["type"] not in ("missing",) and not isinstance(inp, dict | list) and inp is not None:
        msg += f", got {inp!r}"
    return msg


def load_site(path: str | Path, env: dict[str, str] | None = None) -> Site:
    """Validate a site file. Raises ConfigError listing every problem found."""
    p = Path(path)
    try:
        src = load(p, env)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigIssue(p, exc.line, (), exc.message)]) from None
    issues = [ConfigIssue(p, src.line_of(i.loc), i.loc, i.message) for i in src.issues]
    if not isinstance(src.data, dict):
        raise ConfigError(
            [*issues, ConfigIssue(p, 1, (), "expected a mapping with site, buildings, devices")]
        )
    try:
        cfg = SiteConfig.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _strip_union_tags(tuple(err["loc"]))
            issues.append(ConfigIssue(p, src.line_of(loc), loc, _pydantic_message(err)))
        raise ConfigError(issues) from None
    profiles = dict(builtin_profiles())
    if cfg.profiles_dir is not None:
        extra_dir = (p.parent / cfg.profiles_dir).resolve()
        for f in sorted(extra_dir.glob("*.yaml")):
            try:
                prof = load_profile_file(f)
            except (ValidationError, OSError, ValueError) as exc:
                issues.append(ConfigIssue(f, None, (), f"invalid profile: {exc}"))
                continue
            profiles[prof.name] = prof
    issues.extend(cross_check(cfg, src, profiles))
    if issues:
        raise ConfigError(issues)
    return Site(config=cfg, path=p, profiles=profiles)


def _strip_union_tags(loc: Loc) -> Loc:
    # pydantic inserts the union member name (e.g. "function-after[...]") into loc; the user never wrote it.
    return tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in _UNION_TAGS)))


_UNION_TAGS = frozenset({"str", "int", "float", *RULE_KINDS})


def json_schema() -> dict[str, Any]:
    schema = SiteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meterwatch site file"
    return schema
