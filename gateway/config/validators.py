"""Cross-field checks of a site file: references between sections (devices to lines, buildings, domains,
profiles; rules to devices), unique ids, units on a line. Each problem is a ConfigIssue with file:line.
"""

from __future__ import annotations

from gateway.config.errors import ConfigIssue
from gateway.config.profile import Profile
from gateway.config.rules import SequenceRule
from gateway.config.schema import SiteConfig
from gateway.config.yamlsrc import LoadedYaml, Loc


def cross_check(cfg: SiteConfig, src: LoadedYaml, profiles: dict[str, Profile]) -> list[ConfigIssue]:
    """Every reference between sections that one section's model cannot check on its own."""
    issues: list[ConfigIssue] = []

    def add(loc: Loc, msg: str) -> None:
        issues.append(ConfigIssue(src.path, src.line_of(loc), loc, msg))

    def unique(kind: str, items: list[tuple[Loc, str]]) -> set[str]:
        seen: set[str] = set()
        for loc, ident in items:
            if ident in seen:
                add(loc, f"duplicate {kind} id {ident!r}")
            seen.add(ident)
        return seen

    buildings = unique("building", [(("buildings", i, "id"), b.id) for i, b in enumerate(cfg.buildings)])
    domains = unique(
        "supply domain",
        [
            (("buildings", i, "domains", j, "id"), d.id)
            for i, b in enumerate(cfg.buildings)
            for j, d in enumerate(b.domains)
        ],
    )
    lines = unique("line", [(("lines", i, "id"), ln.id) for i, ln in enumerate(cfg.lines)])
    unique("device", [(("devices", i, "id"), d.id) for i, d in enumerate(cfg.devices)])

    for i, b in enumerate(cfg.buildings):
        for j, dom in enumerate(b.domains):
            if dom.parent is not None and dom.parent not in domains:
                add(("buildings", i, "domains", j, "parent"), f"unknown supply domain {dom.parent!r}")
    for i, ln in enumerate(cfg.lines):
        if ln.powered_by is not None and ln.powered_by not in domains:
            add(
                ("lines", i, "powered_by"),
                f"unknown supply domain {ln.powered_by!r}; known: {sorted(domains)}",
            )

    units_on_line: dict[tuple[str, int], str] = {}
    for i, d in enumerate(cfg.devices):
        if d.building not in buildings:
            add(("devices", i, "building"), f"unknown building {d.building!r}; known: {sorted(buildings)}")
        for key in ("domain", "powered_by"):
            ref = getattr(d, key)
            if ref is not None and ref not in domains:
                add(("devices", i, key), f"unknown supply domain {ref!r}; known: {sorted(domains)}")
        if d.line_powered and d.domain is None:
            add(("devices", i, "line_powered"), "line_powered needs domain (the circuit it measures)")
        if d.source != "modbus":
            continue
        if d.line not in lines:
            add(("devices", i, "line"), f"unknown line {d.line!r}; known: {sorted(lines)}")
        if d.profile not in profiles:
            add(("devices", i, "profile"), f"unknown profile {d.profile!r}; known: {sorted(profiles)}")
            continue
        prof = profiles[d.profile] if d.profile else None
        if prof is not None and d.quantities:
            for k, q in enumerate(d.quantities):
                if q not in prof.quantities:
                    add(("devices", i, "quantities", k), f"profile {prof.name} has no quantity {q!r}")
            selected = [p for p in prof.points if p.quantity in d.quantities]
            if selected and all(p.info for p in selected):
                # info points are read when the device comes up, not polled: they cannot tell it is alive
                add(("devices", i, "quantities"), "lists only info points (device information), no reading")
        unit = d.unit if d.unit is not None else (prof.default_unit if prof else 1)
        if d.line is not None:
            other = units_on_line.get((d.line, unit))
            if other is not None:
                add(("devices", i, "unit"), f"unit {unit} on line {d.line} is already used by device {other}")
            units_on_line[(d.line, unit)] = d.id
    for loc, msg in _rule_references(cfg):
        add(loc, msg)
    mqtt_devices = {d.id for d in cfg.devices if d.source == "mqtt"}
    for i, sub in enumerate(cfg.mqtt.subscriptions if cfg.mqtt else []):
        if sub.device is not None and sub.device not in mqtt_devices:
            add(("mqtt", "subscriptions", i, "device"), f"{sub.device!r} is not a device with source: mqtt")
    people = {p.id for p in cfg.oncall.people}
    for i, ch in enumerate(cfg.notify.channels):
        for j, audience in enumerate(ch.audiences):
            building = audience.partition(":")[2] if audience.startswith("residents:") else None
            if building is not None and building not in buildings:
                add(("notify", "channels", i, "audiences", j), f"unknown building {building!r}")
            person = audience.partition(":")[2] if audience.startswith("person:") else None
            if person is not None and person not in people:
                add(
                    ("notify", "channels", i, "audiences", j),
                    f"unknown person {person!r}; expected one of oncall.people[].id",
                )
        if (problem := apprise_url_problem(ch.url.get_secret_value())) is not None:
            add(("notify", "channels", i, "url"), problem)
    return issues


def apprise_url_problem(url: str) -> str | None:
    """What apprise itself says of a channel's URL (it is what will send), or None when it takes it. A
    channel may hold several URLs (comma or space separated, as apprise splits them): each is checked.
    The URL is a secret: the message names the scheme and position only."""
    import apprise
    from apprise.utils.parse import parse_urls

    urls = parse_urls(url)
    if not urls:
        return "expected an apprise URL such as wecombot://KEY, mailto://user:pass@host or json://host/path"
    for i, one in enumerate(urls, 1):
        scheme = one.partition("://")[0] if "://" in one else ""
        where = f"URL {i} of {len(urls)}" if len(urls) > 1 else "this"
        if not scheme:
            return f"{where}: expected an apprise URL such as wecombot://KEY or json://host/path"
        if apprise.Apprise.instantiate(one) is None:
            return (
                f"apprise does not accept {where} {scheme}:// URL: check it against the apprise documentation"
            )
    return None


def _rule_references(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """References from the rules/gateway sections to devices, buildings and domains (cfg: SiteConfig)."""
    devices = {d.id for d in getattr(cfg, "devices", [])}
    buildings = {b.id for b in getattr(cfg, "buildings", [])}
    domains = {d.id for b in getattr(cfg, "buildings", []) for d in b.domains}
    out: list[tuple[Loc, str]] = []
    for i, r in enumerate(getattr(cfg, "rules", None) or []):
        m = r.match
        for name, known in (("devices", devices), ("buildings", buildings), ("domains", domains)):
            for j, ref in enumerate(getattr(m, name) or []):
                if ref not in known:
                    out.append((("rules", i, "match", name, j), f"unknown {name[:-1]} {ref!r}"))
        if isinstance(r, SequenceRule):
            for path, c in [(("running",), r.running)] + [(("expect", k), c) for k, c in enumerate(r.expect)]:
                for j, ref in enumerate(c.devices or []):
                    if ref not in devices:
                        out.append((("rules", i, *path, "devices", j), f"unknown device {ref!r}"))
    gw = getattr(cfg, "gateway", None)
    mains = getattr(gw, "mains", None)
    if mains is not None and mains.device not in devices:
        out.append((("gateway", "mains", "device"), f"unknown device {mains.device!r}"))
    return out
