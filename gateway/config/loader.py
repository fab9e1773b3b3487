"""Loading a site file: YAML with positions, validation, cross-references, each problem named by file:line."""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.default_rules import DEFAULT_RULES, KindMismatch, default_entry, merge_override
from gateway.config.devices import Device
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.modbus import Line
from gateway.config.profile import Profile, builtin_profiles, load_profile_file
from gateway.config.rules import RULE_KINDS
from gateway.config.schema import SiteConfig
from gateway.config.shard import Shard, compound_domains, narrow
from gateway.config.shard import problems as shard_problems
from gateway.config.site import Building, SupplyDomain
from gateway.config.validators import cross_check
from gateway.config.yamlsrc import Loc, YamlSyntaxError, load


@dataclass(frozen=True)
class Site:
    """A validated site file plus what it refers to (profiles), ready for the runtime."""

    config: SiteConfig  # with a `shard:` section, narrowed to the shard (gateway/config/shard.py)
    path: Path
    profiles: dict[str, Profile]
    shard: Shard | None = None

    @property
    def compound(self) -> SiteConfig:
        """The whole site file: the compound every shard shares (the config itself without a shard)."""
        return self.shard.compound if self.shard is not None else self.config

    @property
    def local_id(self) -> str:
        """The site id, or <site id>.shard-<shard id> for one shard: what names this gateway's state
        directory and MQTT client id, since two shards of one compound may run on one host."""
        sid = self.config.site.id
        return sid if self.shard is None else f"{sid}.shard-{self.shard.id}"

    def whole(self) -> Site:
        """This site file with no shard applied (e.g. to simulate the whole compound)."""
        return Site(config=self.compound, path=self.path, profiles=self.profiles)

    def supply_domains(self) -> dict[str, SupplyDomain]:
        """Every supply domain of the whole compound, by id."""
        return compound_domains(self.compound.buildings)

    def _by(self) -> tuple[dict[str, Device], dict[str, list[Device]]]:
        """Devices by id (the first of an id) and by line, made once per devices list: looking them up by
        scanning made building the runtime quadratic (4.5 s at 4,000 meters, a line each)."""
        devices = self.config.devices
        index = self.__dict__.get("_index")
        if index is None or index[0] is not devices or index[1] != len(devices):
            by_id: dict[str, Device] = {}
            by_line: dict[str, list[Device]] = {}
            for d in devices:
                by_id.setdefault(d.id, d)
                if d.line is not None:
                    by_line.setdefault(d.line, []).append(d)
            index = (devices, len(devices), by_id, by_line)
            object.__setattr__(self, "_index", index)  # a cache, not state: the dataclass stays frozen
        return index[2], index[3]

    def device(self, device_id: str) -> Device:
        return self._by()[0][device_id]

    def line(self, line_id: str) -> Line:
        for line in self.config.lines:
            if line.id == line_id:
                return line
        raise KeyError(line_id)

    def devices_on(self, line_id: str) -> list[Device]:
        return list(self._by()[1].get(line_id, ()))

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
    if not isinstance(inp, dict | list) and inp is not None and not msg.endswith(f"got {inp!r}"):
        msg += f", got {inp!r}"
    return msg


def _describe(err: Any, overrides: dict[int, str]) -> tuple[Loc, str]:
    """Where a pydantic error is and what it means, in the site file's words. `overrides`: index in
    `rules:` -> id of the default rule that entry was merged over."""
    loc = _strip_union_tags(tuple(err["loc"]))
    if err["type"] in ("union_tag_not_found", "union_tag_invalid") and loc[:1] == ("rules",):
        return _rule_kind_problem(loc, err.get("input"))
    msg = _pydantic_message(err)
    if len(loc) == 2 and loc[0] == "rules" and loc[1] in overrides:
        # a check across fields, some of which the entry may not have written
        msg += (
            f" (this entry changes the default rule {overrides[loc[1]]}: the fields it leaves out are the "
            "default's; `null` unsets one)"
        )
    return loc, msg


def _rule_kind_problem(loc: Loc, entry: object) -> tuple[Loc, str]:
    """A `rules:` entry with no kind or one that is not a rule kind (pydantic's discriminator errors)."""
    kinds = ", ".join(RULE_KINDS)
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind is not None:
        return (*loc, "kind"), f"unknown rule kind {kind!r}; expected one of {kinds}"
    msg = f"`kind` is {'empty' if isinstance(entry, dict) and 'kind' in entry else 'missing'}: "
    msg += f"expected one of {kinds}"
    rule_id = entry.get("id") if isinstance(entry, dict) else None
    close = get_close_matches(rule_id, _DEFAULT_IDS, n=1) if isinstance(rule_id, str) else []
    if close:
        msg += f" (no default rule has id {rule_id!r}: did you mean {close[0]}?)"
    else:
        msg += " (a new rule needs one; an entry with a default rule's id may leave it out)"
    return loc, msg


def _merge_defaults(data: dict[str, Any]) -> tuple[dict[str, Any], dict[int, str], list[tuple[Loc, str]]]:
    """`data` with every `rules:` entry that has a default rule's id merged over that default (the entry
    changes only the fields it gives), before pydantic sees the union of rule kinds; the indices merged
    (-> default id); and the entries whose kind is not their default's (those entries are the default
    unchanged, so that their other keys raise no follow-on errors)."""
    entries = data.get("rules")
    if not isinstance(entries, list):
        return data, {}, []
    merged: list[Any] = []
    overrides: dict[int, str] = {}
    problems: list[tuple[Loc, str]] = []
    for i, entry in enumerate(entries):
        try:
            rule = merge_override(entry)
        except KindMismatch as exc:
            problems.append((("rules", i, "kind"), str(exc)))
            rule = default_entry(entry["id"])
        if rule is None:
            merged.append(entry)
        else:
            merged.append(rule)
            overrides[i] = str(rule["id"])
    return {**data, "rules": merged}, overrides, problems


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
    data, overrides, problems = _merge_defaults(src.data)
    issues.extend(ConfigIssue(p, src.line_of(loc), loc, msg) for loc, msg in problems)
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc, msg = _describe(err, overrides)
            issues.append(ConfigIssue(p, src.line_of(loc), loc, msg))
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
            if prof.name in builtin_profiles() and not prof.replaces_builtin:
                issues.append(
                    ConfigIssue(
                        f,
                        None,
                        (),
                        f"profile {prof.name!r} has the name of a shipped profile and would silently replace "
                        "it for every device naming it; rename it, or add `replaces_builtin: true` if that "
                        "is the intent",
                    )
                )
                continue
            profiles[prof.name] = prof
    issues.extend(cross_check(cfg, src, profiles))
    issues.extend(ConfigIssue(p, src.line_of(loc), loc, msg) for loc, msg in shard_problems(cfg))
    if issues:
        raise ConfigError(issues)
    runs, shard = narrow(cfg)
    return Site(config=runs, path=p, profiles=profiles, shard=shard)


def _strip_union_tags(loc: Loc) -> Loc:
    # pydantic inserts the union member name (e.g. "function-after[...]") into loc; the user never wrote it.
    return tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in _UNION_TAGS)))


_UNION_TAGS = frozenset({"str", "int", "float", *RULE_KINDS})
_DEFAULT_IDS = [r.id for r in DEFAULT_RULES]


def json_schema() -> dict[str, Any]:
    schema = SiteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meterwatch site file"
    return schema
