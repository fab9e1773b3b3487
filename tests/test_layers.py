"""The import directions of the layout: lower layers never import higher ones.

gateway.core imports nothing of the project; gateway.config only core; drivers and rules only core and
config; simulators also drivers; inside gateway each package names what it may use; only gateway.cli
imports simulators. Every import counts, also those inside functions and under TYPE_CHECKING: a lazy
import is still a dependency. A new top-level package inside gateway/ must be given its rule here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

PROJECT = ("gateway", "drivers", "rules", "simulators")

# package -> the project packages it may import (itself always allowed). The longest matching prefix wins.
_BELOW_APP = frozenset(
    {
        "gateway.core",
        "gateway.config",
        "gateway.sink",
        "gateway.incidents",
        "gateway.respond",
        "gateway.observe",
        "gateway.web",
        "gateway.review",
        "gateway.fleet",
        "drivers",
        "rules",
    }
)
ALLOWED: dict[str, frozenset[str]] = {
    "gateway.core": frozenset(),
    "gateway.config": frozenset({"gateway.core"}),
    "drivers": frozenset({"gateway.core", "gateway.config"}),
    "rules": frozenset({"gateway.core", "gateway.config"}),
    "simulators": frozenset({"gateway.core", "gateway.config", "drivers"}),
    "gateway.sink": frozenset({"gateway.core", "gateway.config"}),
    "gateway.incidents": frozenset({"gateway.core", "gateway.config", "rules"}),
    "gateway.respond": frozenset({"gateway.core", "gateway.config", "gateway.incidents", "rules"}),
    "gateway.observe": frozenset(
        {"gateway.core", "gateway.config", "gateway.sink", "gateway.incidents", "gateway.respond", "rules"}
    ),
    "gateway.tools": frozenset({"gateway.core", "gateway.config", "gateway.sink"}),
    # reports and the monthly review: read the incident store, never the time-series database
    "gateway.review": frozenset(
        {"gateway.core", "gateway.config", "gateway.incidents", "gateway.respond", "rules"}
    ),
    # the fleet bridge: incident transitions, notices and KPIs to the company's broker
    "gateway.fleet": frozenset(
        {"gateway.core", "gateway.config", "gateway.incidents", "gateway.respond", "gateway.review", "rules"}
    ),
    # the HTTP edge of the respond side: the API, the console and the public pages
    "gateway.web": frozenset(
        {
            "gateway.core",
            "gateway.config",
            "gateway.incidents",
            "gateway.respond",
            "gateway.review",
            "gateway.observe",
            "rules",
        }
    ),
    # the read-only fleet view: the fleet topics' names and version, the console's templates and style sheet
    "gateway.fleetview": frozenset({"gateway.core", "gateway.config", "gateway.fleet", "gateway.web"}),
    # the daemon's wiring: every part, never the command line or the simulators
    "gateway.app": _BELOW_APP,
    # only the command line reaches the simulators (the demo, `meterwatch simulate`)
    "gateway.cli": _BELOW_APP | {"gateway.app", "gateway.tools", "gateway.fleetview", "simulators"},
}


def layer_of(module: str) -> str | None:
    """The ALLOWED key a module belongs to (longest prefix), or None for a module no rule covers."""
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved against `module`."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target


def violations(source: str, module: str, where: str) -> list[str]:
    """Every import of `source` (as module `module`) that breaks the layer rules, as `where:line: ...`."""
    layer = layer_of(module)
    if layer is None:
        return [f"{where}: module {module} is in no layer: give its package a rule in tests/test_layers.py"]
    out = []
    for line, target in imported_modules(source, module):
        if target.split(".")[0] not in PROJECT:
            continue
        target_layer = layer_of(target) or target
        if target_layer == layer or target_layer in ALLOWED[layer]:
            continue
        allowed = ", ".join(sorted(ALLOWED[layer])) or "nothing of the project"
        out.append(f"{where}:{line}: {module} ({layer}) imports {target}; {layer} may import {allowed}")
    return out


def project_modules() -> Iterator[tuple[Path, str]]:
    for top in PROJECT:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield path, ".".join(parts)


def test_every_import_follows_the_layers() -> None:
    found: list[str] = []
    for path, module in project_modules():
        if not path.read_text(encoding="utf-8").strip():
            continue  # an empty __init__.py (gateway/ itself has no layer: only its packages do)
        found += violations(path.read_text(encoding="utf-8"), module, str(path.relative_to(REPO)))
    assert found == [], "imports against the layers:\n" + "\n".join(found)


def test_the_check_catches_a_deliberate_wrong_import() -> None:
    # A driver importing the simulators, the rules importing the daemon, the core importing the config,
    # the config importing a driver: each is reported with its line.
    wrong = {
        "drivers.modbus.poller": "import asyncio\nfrom simulators.world import World\n",
        "rules.engine": "def f() -> None:\n    from gateway.app.daemon import build_runtime\n",
        "gateway.core.bus": "from gateway.config import Site\n",
        "gateway.config.devices": "if TYPE_CHECKING:\n    import drivers.profile\n",
        "gateway.sink.spool": "from ..incidents import store\n",
    }
    for module, source in wrong.items():
        got = violations(source, module, "x.py")
        assert len(got) == 1, (module, got)
    assert (
        "x.py:2: drivers.modbus.poller (drivers) imports simulators.world"
        in violations(wrong["drivers.modbus.poller"], "drivers.modbus.poller", "x.py")[0]
    )
    assert (
        "imports gateway.incidents"
        in violations(wrong["gateway.sink.spool"], "gateway.sink.spool", "x.py")[0]
    )
    # ...while the same imports in a layer allowed to make them pass.
    assert violations("from simulators.world import World\n", "gateway.cli.demo", "x.py") == []
    assert violations("from gateway.config import Site\n", "drivers.modbus.poller", "x.py") == []


def test_a_package_without_a_rule_is_reported() -> None:
    assert violations("", "gateway.newthing.mod", "x.py") == [
        "x.py: module gateway.newthing.mod is in no layer: give its package a rule in tests/test_layers.py"
    ]
