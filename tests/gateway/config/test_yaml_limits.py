"""Hostile YAML (alias bombs, deep nesting, huge files) is refused with one file:line error, in bounded
memory, instead of a MemoryError or a RecursionError traceback."""

from __future__ import annotations

import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_site, yamlsrc
from gateway.config.yamlsrc import YamlSyntaxError
from tests.helpers import REPO

MiB = 1024 * 1024
PEAK_LIMIT = 4 * MiB  # what refusing any of these may allocate (the alias bomb needs ~1 MB)


@pytest.fixture(autouse=True)
def address_space_cap() -> Iterator[None]:
    """Without the limits a bomb grows until the machine runs out of memory; cap this process's address
    space at 256 MiB above what it uses now, so that turns into a MemoryError (a failure), then restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + 256 * MiB
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def refused(path: Path) -> tuple[YamlSyntaxError, int]:
    """Load `path`, expecting a refusal; return it and the peak of memory allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(YamlSyntaxError) as info:
            yamlsrc.load(path, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


def billion_laughs() -> str:
    """Ten levels, each a list of nine aliases of the level below: 9**10 strings once expanded."""
    lines = ["laughs_0: &laughs_0 [" + ", ".join(['"lol lol lol"'] * 9) + "]"]
    for level in range(1, 10):
        lines.append(f"laughs_{level}: &laughs_{level} [" + ", ".join([f"*laughs_{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_the_billion_laughs_alias_bomb_is_refused_at_the_alias_that_passes_the_budget(
    tmp_path: Path,
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 4096
    err, peak = refused(bomb)
    # Values reached through aliases: level 1 adds 9*10, level 2 9*91, level 3 9*820 (8,289 so far);
    # level 4's first alias adds 7,381 (a list of 9 of level 2): past 10,000 on line 5.
    assert (err.path, err.line) == (bomb, 5)
    assert "aliases expand to more than 10000 values" in err.message
    assert "*laughs_3" in err.message
    assert peak < PEAK_LIMIT


def test_the_alias_bomb_through_load_site_is_one_config_issue(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    with pytest.raises(ConfigError) as info:
        load_site(bomb)
    assert [str(i) for i in info.value.issues] == [
        f"{bomb}:5: aliases expand to more than 10000 values here (*laughs_3 is 7381); "
        "a YAML alias bomb? Aliases are for sharing a few small blocks"
    ]


@pytest.mark.parametrize(
    "nested",
    [
        pytest.param(lambda n: "[" * n + "]" * n, id="brackets"),
        pytest.param(lambda n: "{a: " * n + "1" + "}" * n, id="braces"),
    ],
)
def test_50k_levels_of_nesting_are_refused_where_they_pass_64(
    tmp_path: Path, nested: Callable[[int], str]
) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("site: {id: s1}\nbuildings:\n  " + nested(50_000) + "\n")
    err, peak = refused(deep)
    assert (err.path, err.line) == (deep, 3)
    assert "nested deeper than 64 levels" in err.message
    assert peak < PEAK_LIMIT


def test_64_levels_load_and_65_do_not(tmp_path: Path) -> None:
    f = tmp_path / "levels.yaml"
    f.write_text("x: " + "[" * 63 + "]" * 63 + "\n")  # the root mapping is level 1
    value: Any = yamlsrc.load(f, {}).data["x"]
    for _ in range(62):
        (value,) = value
    assert value == []
    f.write_text("x: " + "[" * 64 + "]" * 64 + "\n")
    err, _ = refused(f)
    assert err.line == 1 and "nested deeper than 64 levels" in err.message


def test_an_alias_counts_the_depth_of_what_it_names(tmp_path: Path) -> None:
    # Each part is 40 levels deep at most; the alias puts 40 levels under 31.
    f = tmp_path / "deep_alias.yaml"
    f.write_text("a: &deep " + "[" * 39 + "]" * 39 + "\n" + "b: " + "[" * 30 + "*deep" + "]" * 30 + "\n")
    err, _ = refused(f)
    assert (err.line, err.message.startswith("nested deeper than 64 levels")) == (2, True)


def test_an_alias_inside_the_collection_it_names_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "cycle.yaml"
    f.write_text("site: {id: s1}\nloop: &loop\n  - 1\n  - *loop\n")
    err, _ = refused(f)
    assert (err.line, err.message) == (4, "alias *loop is inside the collection it names (a cycle)")


def test_too_many_values_are_refused_where_the_count_passes_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yamlsrc, "MAX_VALUES", 2000)  # the mechanism; 50,000 would only be slower
    f = tmp_path / "wide.yaml"
    f.write_text("site: {id: s1}\nxs:\n" + "".join(f"  - {i}\n" for i in range(3000)))
    err, _ = refused(f)
    # The root, site, {, id, s1, xs and [ are 7 values: the 2,001st is item 1,994, on line 2 + 1,994.
    assert (err.line, err.message) == (
        1996,
        "more than 2000 values (aliases expanded); too large for a site file",
    )


def test_a_file_past_1_mib_is_refused_on_the_line_where_it_passes(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    text = "site: {id: s1}\n" + ("# " + "x" * 997 + "\n") * 1100  # 1,000 bytes a line
    big.write_text(text)
    err, _ = refused(big)
    assert err.line == text.encode()[: 1024 * 1024].count(b"\n") + 1 == 1050
    assert err.message.startswith("the file is larger than 1 MiB")


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as fh:
        fh.truncate(200 * MiB)  # sparse: no disk used
    err, peak = refused(huge)
    assert err.line == 1 and "larger than 1 MiB" in err.message
    assert peak < PEAK_LIMIT


SHARED = """\
site: {id: s1, timezone: Asia/Shanghai}
buildings:
  - id: B1
    domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]
lines:
  - {id: l1, transport: tcp, host: 127.0.0.1, port: 5020}
devices:
  - {id: m1, building: B1, domain: B1-power, role: main_power, line: l1, unit: 1, profile: sdm630}
  - {id: p1, building: B1, domain: B1-water, role: zone_pressure, line: l1, unit: 2, profile: rs485-pressure}
  - {id: p2, building: B1, domain: B1-water, role: zone_pressure, line: l1, unit: 3, profile: rs485-pressure}
rules:
  - id: pressure.low
    kind: threshold
    quantity: pressure
    below: 1.0
    match: &pressure_meters {roles: [zone_pressure]}
  - id: pressure.high
    kind: threshold
    quantity: pressure
    above: 6.0
    match: *pressure_meters
  - id: pressure.very_low
    kind: threshold
    quantity: pressure
    below: 0.5
    match: *pressure_meters
"""


def test_a_site_file_sharing_match_blocks_through_aliases_loads(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text(SHARED)
    site = load_site(f)
    matches = {r.id: r.match for r in site.config.rules or []}
    assert matches["pressure.low"] == matches["pressure.high"] == matches["pressure.very_low"]
    assert matches["pressure.low"] is not None and matches["pressure.low"].roles == ["zone_pressure"]
    r = meterwatch_check(f)
    assert r.returncode == 0, r.stderr


def test_a_site_of_300_devices_with_an_alias_each_is_within_the_limits(tmp_path: Path) -> None:
    devices = "".join(
        f"  - {{id: d{i}, building: B1, line: l1, unit: {i % 247 + 1}, profile: sdm630, tags: *common}}\n"
        for i in range(300)
    )
    f = tmp_path / "big_site.yaml"
    f.write_text("common: &common [a, b, c, d, e, f, g, h]\ndevices:\n" + devices)
    data = yamlsrc.load(f, {}).data
    assert len(data["devices"]) == 300 and data["devices"][299]["tags"] == list("abcdefgh")


def meterwatch_check(site: Path) -> subprocess.CompletedProcess[str]:
    """`meterwatch check` in a child capped at 512 MiB of address space (it needs ~50 MB)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (512 * MiB, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(site)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        preexec_fn=cap,
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param(billion_laughs(), 5, "aliases expand to more than 10000 values", id="alias-bomb"),
        pytest.param("x: " + "[" * 50_000 + "]" * 50_000 + "\n", 1, "nested deeper than 64", id="brackets"),
        pytest.param(
            "x:\n  " + "{a: " * 50_000 + "}" * 50_000 + "\n", 2, "nested deeper than 64", id="braces"
        ),
    ],
)
def test_meterwatch_check_prints_one_file_line_error_and_exits_1(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    r = meterwatch_check(bomb)
    assert r.returncode == 1
    issue, count = r.stderr.splitlines()  # the error, then the CLI's "1 problem(s) in ..." count
    assert issue.startswith(f"{bomb}:{line}: {message}")
    assert count == f"1 problem(s) in {bomb}"
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param(b'site: {id: s1}\nname: "caf\xe9"\n', 2, "not UTF-8 text (byte 0xe9)", id="latin-1"),
        pytest.param(
            b"site: {id: s1}\n[1]: 2\n", 2, "a key must be a plain value, not a list or mapping", id="key"
        ),
        pytest.param(b"site: {id: s1}\nport: !!int abc\n", 2, "cannot read 'abc' as !!int", id="int"),
        pytest.param(
            b"x:\n  n: " + b"9" * 5000 + b"\n", 2, "cannot read '" + "9" * 40 + "...' as !!int", id="digits"
        ),
        pytest.param(b'name: "a\x01b"\n', 1, "control character #x01 is not allowed", id="control"),
        pytest.param(b"at: 2001-02-30\n", 1, "cannot read '2001-02-30' as !!timestamp", id="date"),
        pytest.param(
            b"x: !!python/name:os.system ls\n",
            1,
            "cannot read 'ls' as !!python/name:os.system",
            id="python-tag",
        ),
        pytest.param(b"base: &b {a: 1}\nx:\n  <<: *b\n", 3, "YAML merge keys are not supported", id="merge"),
    ],
)
def test_a_value_yaml_cannot_make_is_one_file_line_error(
    tmp_path: Path, text: bytes, line: int, message: str
) -> None:
    f = tmp_path / "odd.yaml"
    f.write_bytes(text)
    with pytest.raises(YamlSyntaxError) as info:
        yamlsrc.load(f, {})
    assert (info.value.path, info.value.line, info.value.message) == (f, line, message)
