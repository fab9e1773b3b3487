"""Golden cases of the Modbus side: each folder in tests/drivers/modbus/cases is a device and its output.

A case folder holds
- device.yaml: the device as the site file gives it (profile: a shipped one or the one in profile.yaml; the
  options unit, max_gap, max_registers_per_read, one_read_per_value, quantities); its comment says what the
  case pins;
- profile.yaml (optional): a profile written for the case;
- expected_plan.yaml: the requests the daemon plans for the device (`reads:` polled every cycle and
  `info_reads:` read when it comes up, each with function, address, count and the points it covers), or
  `errors:` (substrings of the errors, one per error) when loading or planning must fail;
- registers.yaml + expected_samples.yaml: a register dump, and the Samples (a cycle's values, a read with a
  decoding fault apart), the DeviceInfo text and the values dropped (not_available, nan, decode) that one
  poll cycle makes of it.

The plan comes from load_site and gateway/app/modbus.py (modbus_specs -> device_spec -> plan_reads), as the
daemon builds it; the samples from drivers.modbus.poller.DevicePoller.cycle() answering each planned read
from the dump, so decoding is the poller's own. registers.yaml maps a function (coil, discrete, holding,
input) to {address: "hex words from there"} (bits: "1 0 1"); `frames:` adds RTU read responses (CRC-checked,
function from the frame) at an address. Registers the dump does not list read 0, as gap registers do on a
meter.

Expected files are written by tests/drivers/modbus/cases/_gen.py and checked by hand against the datasheet
values noted in registers.yaml and the profiles.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.crc import crc_ok
from drivers.modbus.planner import FUNCTION_CODE, ReadRequest
from drivers.modbus.poller import DevicePoller, ReadOutcome
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.app.modbus import modbus_specs
from gateway.config import ConfigError, ConfigIssue, format_loc, load_site
from gateway.core.once import OnceLog
from gateway.core.stats import DeviceStats
from gateway.core.types import DeviceInfo, Event, Sample
from tests.helpers import REPO

CASES = REPO / "tests" / "drivers" / "modbus" / "cases"
ALL = sorted(p.name for p in CASES.iterdir() if (p / "device.yaml").exists())
DEVICE = "dut"
CODE_FUNCTION = {code: name for name, code in FUNCTION_CODE.items()}
DROP_KINDS = ("not_available", "nan", "decode")

SITE = """\
site: {{id: golden, timezone: UTC}}
buildings: [{{id: B1}}]
lines: [{{id: L1, transport: tcp, host: 127.0.0.1, port: 502}}]
{profiles_dir}devices:
  - {device}
"""


# ---------------------------------------------------------------------------------------------------------
# The plan


def _pydantic_lines(text: str) -> str:
    """A pydantic ValidationError's text as `loc: message` lines, without its type tags and links."""
    lines = [ln for ln in text.splitlines() if "errors.pydantic.dev" not in ln]
    out: list[str] = []
    head = lines[0] if lines else ""
    if not re.match(r"\d+ validation errors? for ", head):
        return text.strip()
    rest = lines[1:]
    for loc, msg in zip(rest[::2], rest[1::2], strict=False):
        message = re.sub(r" \[type=.*$", "", msg.strip())
        out.append(f"{loc.strip()}: {message}")
    return "; ".join(out)


def _issue_text(issue: ConfigIssue) -> str:
    """A site-file problem without its file and line (the site file is generated): field path and message."""
    message = issue.message
    prefix = "invalid profile: "
    if message.startswith(prefix):
        message = prefix + _pydantic_lines(message[len(prefix) :])
    return f"{format_loc(issue.loc)}: {message}" if issue.loc else message


def load_device(case_dir: Path, tmp: Path) -> tuple[LineSpec, DeviceSpec]:
    """The device of a case as the daemon builds it: a site file around device.yaml, load_site, modbus_specs.

    Raises ConfigError or ValueError as the daemon would.
    """
    device = yaml.safe_load((case_dir / "device.yaml").read_text()) or {}
    entry = {"id": DEVICE, "building": "B1", "line": "L1", **device}
    profiles_dir = ""
    if (case_dir / "profile.yaml").exists():
        (tmp / "profiles").mkdir(exist_ok=True)
        shutil.copy(case_dir / "profile.yaml", tmp / "profiles" / "profile.yaml")
        profiles_dir = "profiles_dir: profiles\n"
    site_file = tmp / "site.yaml"
    flow = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
    site_file.write_text(SITE.format(profiles_dir=profiles_dir, device=flow))
    site = load_site(site_file)
    ((line, (spec,)),) = modbus_specs(site)
    return line, spec


def _read_record(r: ReadRequest) -> dict[str, Any]:
    return {
        "function": r.function,
        "address": r.address,
        "count": r.count,
        "points": [p.quantity for p in r.points],
    }


def plan_of(case_dir: Path, tmp: Path) -> dict[str, Any]:
    """What expected_plan.yaml must hold for the case: the planned reads, or the errors."""
    try:
        _, spec = load_device(case_dir, tmp)
    except ConfigError as exc:
        return {"errors": [_issue_text(i) for i in exc.issues]}
    except ValueError as exc:
        return {"errors": [str(exc)]}
    return {
        "unit": spec.unit,
        "reads": [_read_record(r) for r in spec.requests],
        "info_reads": [_read_record(r) for r in spec.info_requests],
    }


# ---------------------------------------------------------------------------------------------------------
# The samples


def _words(text: object, where: str) -> list[int]:
    if not isinstance(text, str):
        raise ValueError(f"{where}: give words as a quoted string of hex words, got {text!r}")
    return [int(w, 16) for w in text.split()]


def register_image(case_dir: Path) -> dict[tuple[str, int], int]:
    """(function, address) -> word (or bit) from registers.yaml."""
    dump = yaml.safe_load((case_dir / "registers.yaml").read_text()) or {}
    image: dict[tuple[str, int], int] = {}

    def put(function: str, address: int, words: list[int], where: str) -> None:
        for i, w in enumerate(words):
            key = (function, address + i)
            if image.get(key, w) != w:
                raise ValueError(
                    f"{where}: {function} {address + i} given twice, {image[key]:04X} and {w:04X}"
                )
            limit = 1 if function in ("coil", "discrete") else 0xFFFF
            if not 0 <= w <= limit:
                raise ValueError(f"{where}: {w:X} is not a {function} value")
            image[key] = w

    for function in FUNCTION_CODE:
        for address, text in (dump.get(function) or {}).items():
            put(function, int(address), _words(text, f"{function} {address}"), "registers.yaml")
    for i, item in enumerate(dump.get("frames") or []):
        raw = bytes.fromhex(item["frame"])
        where = f"registers.yaml frames[{i}]"
        if not crc_ok(raw):
            raise ValueError(f"{where}: bad CRC")
        code, size, data = raw[1], raw[2], raw[3:-2]
        if code not in (3, 4) or size != len(data) or size % 2:
            raise ValueError(f"{where}: not a read-registers response")
        words = [int.from_bytes(data[j : j + 2], "big") for j in range(0, size, 2)]
        put(CODE_FUNCTION[code], int(item["address"]), words, where)
    unknown = set(dump) - {*FUNCTION_CODE, "frames"}
    if unknown:
        raise ValueError(f"registers.yaml: unknown keys {sorted(unknown)}")
    return image


@dataclass
class _Recorder:
    events: list[Event] = field(default_factory=list)

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


def samples_of(case_dir: Path, tmp: Path) -> dict[str, Any]:
    """What expected_samples.yaml must hold: one poll cycle of the device answered from registers.yaml."""
    line, spec = load_device(case_dir, tmp)
    image = register_image(case_dir)

    async def read(request: ReadRequest) -> ReadOutcome:
        words = [image.get((request.function, request.address + i), 0) for i in range(request.count)]
        return ReadOutcome(words=words)

    recorder = _Recorder()
    stats = DeviceStats(DEVICE, line.id)
    once = OnceLog(logging.getLogger("meterwatch.test.golden"))
    poller = DevicePoller(line, spec, read, recorder, stats, once)
    assert asyncio.run(poller.cycle()), "the device did not answer"
    samples = [e for e in recorder.events if isinstance(e, Sample)]
    info = [e for e in recorder.events if isinstance(e, DeviceInfo)]
    dropped: dict[str, list[str]] = {}
    for key in sorted(once.counts):
        _, kind, *rest = key
        if kind in DROP_KINDS and rest:
            dropped.setdefault(kind, []).append(rest[0])
    # Every drop the poller counted is named above, once per quantity.
    assert {k: len(v) for k, v in dropped.items()} == {
        k: stats.errors[k] for k in DROP_KINDS if stats.errors[k]
    }
    out: dict[str, Any] = {
        "samples": [{"quality": s.quality, "values": dict(s.values)} for s in samples],
        "dropped": dropped,
        "info": dict(info[0].text) if info else {},
    }
    assert len(info) <= 1
    return out


# ---------------------------------------------------------------------------------------------------------
# Rendering (the expected files and the diff of a failure)


def _hex(address: int) -> str:
    return f"0x{address:04X}"


def _scalar(v: object) -> str:
    if isinstance(v, str):
        return yaml.safe_dump(v, default_style=None, width=10_000).removesuffix("\n...\n").strip()
    if isinstance(v, float):
        return ".nan" if v != v else repr(v)
    return str(v)


def render_plan(plan: dict[str, Any]) -> str:
    if "errors" in plan:
        return "errors:\n" + "".join(f"  - {_scalar(e)}\n" for e in plan["errors"])
    out = [f"unit: {plan['unit']}"]
    for key in ("reads", "info_reads"):
        reads = plan[key]
        out.append(f"{key}:" + ("" if reads else " []"))
        for r in reads:
            out.append(f"  - function: {r['function']}  # FC{FUNCTION_CODE[r['function']]:02d}")
            out.append(f"    address: {_hex(r['address'])}  # {r['address']}")
            out.append(f"    count: {r['count']}")
            out.append("    points: [" + ", ".join(r["points"]) + "]")
    return "\n".join(out) + "\n"


def render_samples(result: dict[str, Any]) -> str:
    out = ["samples:" + ("" if result["samples"] else " []")]
    for s in result["samples"]:
        out.append(f"  - quality: {s['quality']}")
        out.append("    values:")
        out.extend(f"      {q}: {_scalar(v)}" for q, v in s["values"].items())
    out.append("dropped:" + ("" if result["dropped"] else " {}"))
    out.extend(f"  {kind}: [{', '.join(qs)}]" for kind, qs in result["dropped"].items())
    out.append("info:" + ("" if result["info"] else " {}"))
    out.extend(f"  {q}: {_scalar(t)}" for q, t in result["info"].items())
    return "\n".join(out) + "\n"


HEADER = "# Written by tests/drivers/modbus/cases/_gen.py, checked by hand; see {what}.\n"


def _compare(case: str, name: str, want: str, got: str) -> None:
    if want == got:
        return
    diff = "".join(
        difflib.unified_diff(
            want.splitlines(keepends=True), got.splitlines(keepends=True), f"{name} (expected)", "actual"
        )
    )
    pytest.fail(f"{case}: the result differs from {name}:\n{diff}", pytrace=False)


def errors_mismatch(want: dict[str, Any], got: dict[str, Any]) -> str | None:
    """Why `got` does not have the errors `want` lists (each a substring of one error, as many), or None."""
    errors = got.get("errors")
    if errors is None:
        return f"expected errors {want['errors']}, got a plan:\n{render_plan(got)}"
    for w in want["errors"]:
        if not any(w in g for g in errors):
            return f"no error like {w!r} in {errors}"
    if len(errors) != len(want["errors"]):
        return f"{len(errors)} errors, expected {len(want['errors'])}: {errors}"
    return None


@pytest.mark.parametrize("case", ALL)
def test_case(case: str, tmp_path: Path) -> None:
    d = CASES / case
    has_plan, has_samples = (d / "expected_plan.yaml").exists(), (d / "expected_samples.yaml").exists()
    assert has_plan or has_samples, f"{case}: neither expected_plan.yaml nor expected_samples.yaml"
    assert has_samples == (d / "registers.yaml").exists(), (
        f"{case}: registers.yaml and expected_samples.yaml go together"
    )
    if has_plan:
        want = yaml.safe_load((d / "expected_plan.yaml").read_text())
        got = plan_of(d, tmp_path)
        if "errors" in want:
            why = errors_mismatch(want, got)
            if why is not None:
                pytest.fail(f"{case}: {why}", pytrace=False)
        else:
            # Compared as data, shown as the files are written.
            _compare(case, "expected_plan.yaml", render_plan(want), render_plan(got))
    if has_samples:
        want = yaml.safe_load((d / "expected_samples.yaml").read_text())
        got = samples_of(d, tmp_path)
        _compare(case, "expected_samples.yaml", render_samples(want), render_samples(got))


def test_every_case_folder_is_a_case() -> None:
    """A folder without device.yaml would be skipped silently: not allowed."""
    folders = sorted(p.name for p in CASES.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders == ALL
    assert len(ALL) >= 8
