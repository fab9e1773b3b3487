"""The C encoder (gateway.sink._lineenc) against LineEncoder's pure-Python path: on random and edge-case
batches both give the same bytes (float text included: the C one spells floats as orjson does), the same
lines, the same counters and the same errors; the batches C leaves to Python are met and give the same
results too. In the dev venv the extension must be built: its absence fails here, it never skips."""

from __future__ import annotations

import math
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from gateway.config import Site, load_site
from gateway.core.types import Quality, Sample
from gateway.sink import lineproto
from gateway.sink.lineproto import QUALITY_CODES, LineEncoder
from tests.gateway.sink.test_lineproto import SITE  # the same site as the Python encoder's tests

DEVICES = ["M1", "P1", "T1", "Ünï 1", "ghost", "odd device,x=y", "{brace}"]
NAMES = ["voltage_l1", "current_l1", "a b", "a,b", "a=b", "back\\slash", "{brace}", "ünï", "日本"]
QUALITIES: list[Quality] = ["good", "stale", "comm_error", "decode_error"]

SUBNORMALS = [5e-324, -5e-324, 1e-310, 2.2250738585072009e-308, 2.2250738585072014e-308]
EDGE_FLOATS: list[float] = [
    0.0,
    -0.0,
    1e-300,
    1e-7,
    1.5e-7,
    1e-5,
    -1.234e-5,
    9.999999999999999e-5,
    1e-4,
    0.1 + 0.2,
    1.0,
    230.17,
    123456.789,
    999999999999999.9,
    1e15,
    2.0**53,
    2.0**53 + 2,
    1e16,
    1.2345678901234568e17,
    1e21,
    1e22,
    1e23,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    *SUBNORMALS,
]
EDGE_INTS: list[int] = [0, 1, -1, 2**53 + 1, -(2**63), 2**64, 10**20, -(10**30), 10**308]
NON_FINITE = [math.nan, math.inf, -math.inf]

# stamps: ts * 1e6 at and around the 64-bit limits (signed and unsigned), halves (Python rounds them to
# even), the epoch, negative and ordinary times
STAMP_LIMITS = [2.0**63, 2.0**64, -(2.0**63)]
EDGE_STAMPS: list[float] = [
    0.0,
    -0.0,
    1_700_000_000.123456,
    1_700_000_000.0000005,
    0.0000005,
    0.0000015,
    0.0000025,
    -0.0000025,
    -1.5,
    *(math.nextafter(limit / 1e6, toward) for limit in STAMP_LIMITS for toward in (0.0, math.inf, -math.inf)),
    *(limit / 1e6 for limit in STAMP_LIMITS),
]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(SITE, encoding="utf-8")
    return load_site(p)


def random_double(rng: random.Random) -> float:
    """A value as sources give them, or any double at all."""
    kind = rng.random()
    if kind < 0.25:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 6))  # a register with a scale factor
    if kind < 0.4:
        return float(struct.unpack("<f", struct.pack("<f", rng.uniform(0, 500)))[0])  # a float32 reading
    if kind < 0.55:
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(-9, 24)
    if kind < 0.7:
        return rng.randint(0, 10**15) / 10 ** rng.randint(0, 20)
    v = float(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])
    return v if math.isfinite(v) else rng.choice(SUBNORMALS)


def random_value(rng: random.Random, clean: bool) -> Any:
    kind = rng.random()
    if kind < 0.6:
        return random_double(rng)
    if kind < 0.8:
        return rng.choice(EDGE_FLOATS)
    if kind < 0.88:
        return rng.choice([*EDGE_INTS[:-1], rng.randint(-(10**6), 10**6)])  # ints from JSON payloads
    if kind < 0.95 or clean:
        return rng.choice([True, False])
    return rng.choice(NON_FINITE)


def random_stamp(rng: random.Random) -> float:
    kind = rng.random()
    if kind < 0.5:
        return rng.uniform(1e9, 2e9)
    if kind < 0.7:
        return (rng.randint(-(10**15), 10**15) + 0.5) / 1e6  # near a half microsecond
    return rng.choice(EDGE_STAMPS)


def random_sample(rng: random.Random, clean: bool) -> Sample:
    """`clean`: only what the C encoder writes itself (no NaN, no infinity)."""
    names = rng.sample(NAMES, rng.choice([0, 1, 2, 5, len(NAMES)]))
    values = {name: random_value(rng, clean) for name in names}
    return Sample(rng.choice(DEVICES), random_stamp(rng), values, rng.choice(QUALITIES))


class Spy:
    """Counts what the C encoder answered: a body, a missing template (an index), or the Python path."""

    def __init__(self, enc: LineEncoder) -> None:
        assert enc._c_encode is not None, "the encoder was made without its C path"
        self.inner: Callable[..., Any] = enc._c_encode
        self.bodies = self.missing = self.python = 0
        enc._c_encode = self

    def __call__(self, *args: Any) -> Any:
        out = self.inner(*args)
        if isinstance(out, tuple):
            self.bodies += 1
        elif isinstance(out, int):
            self.missing += 1
        else:
            self.python += 1
        return out


def outcome(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as e:  # both paths must fail alike
        return ("raised", type(e))


def assert_same(c_enc: LineEncoder, py_enc: LineEncoder, batch: Sequence[Sample]) -> None:
    assert outcome(lambda: c_enc.encode_body(batch)) == outcome(lambda: py_enc.encode_body(batch)), batch
    assert outcome(lambda: c_enc.encode_many(batch)) == outcome(lambda: py_enc.encode_many(batch)), batch
    assert (c_enc.skipped_values, c_enc.unknown_devices) == (py_enc.skipped_values, py_enc.unknown_devices)


def test_the_accelerator_is_built(site: Site) -> None:
    """make test runs in the bootstrapped venv, whose editable install builds the extension."""
    from gateway.sink import _lineenc

    assert callable(_lineenc.encode)
    if os.environ.get("METERWATCH_NO_ACCEL", "") in ("", "0"):
        assert lineproto.ACCELERATED
    assert LineEncoder(site, accelerated=True).accelerated  # what `run` logs as the sink's encoder
    assert not LineEncoder(site, accelerated=False).accelerated


def test_the_switch_forces_the_python_path() -> None:
    code = "from gateway.sink import lineproto as l; print(l.ACCELERATED)"
    env = {k: v for k, v in os.environ.items() if k != "METERWATCH_NO_ACCEL"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    off = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "METERWATCH_NO_ACCEL": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert (on.stdout.strip(), off.stdout.strip()) == ("True", "False")


def test_floats_are_orjsons_text(site: Site) -> None:
    """The Python path writes orjson's float text; the C one must write exactly the same."""
    from gateway.sink import _lineenc

    rng = random.Random(3)
    values = [*EDGE_FLOATS, *(random_double(rng) for _ in range(100_000))]
    for v in values:
        assert _lineenc.format_float(v) == orjson.dumps(v).decode(), repr(v)
    for v in NON_FINITE:
        with pytest.raises(ValueError):
            _lineenc.format_float(v)


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "with-nonfinite"])
def test_c_and_python_paths_give_the_same_bytes(site: Site, clean: bool) -> None:
    rng = random.Random(21 if clean else 22)
    c_enc, py_enc = LineEncoder(site, accelerated=True), LineEncoder(site, accelerated=False)
    spy = Spy(c_enc)
    for size in (0, 1, 2, 7, 50, 300):
        for _ in range(60):
            assert_same(c_enc, py_enc, [random_sample(rng, clean) for _ in range(size)])
    assert spy.bodies > 100 and spy.missing > 0  # the C path wrote batches, templates were made for it
    if clean:  # stamps past 64 bits still send some batches the Python way
        assert spy.python < spy.bodies
    else:
        assert spy.python > 50 and py_enc.skipped_values > 0


@pytest.mark.parametrize(
    "case",
    [
        "stamps",
        "nan-value",
        "huge-int",
        "nan-stamp",
        "inf-stamp",
        "int-stamp",
        "str-value",
        "mapping-proxy",
        "empty",
        "unknown-quality",
        "newline-name",
        "newline-device",
        "surrogate-name",
    ],
)
def test_edge_batches(site: Site, case: str) -> None:
    """Each edge on its own, in a batch with ordinary samples around it: same bytes, or the same error."""
    ordinary = [Sample("M1", 1_700_000_000.5, {"voltage_l1": 230.17, "current_l1": 5}, "good")]
    edge: list[Sample]
    if case == "stamps":
        edge = [Sample("M1", ts, {"voltage_l1": 1.0}) for ts in EDGE_STAMPS]
    elif case == "nan-value":
        edge = [Sample("P1", 1.0, {"pressure": math.nan, "ok": 1.5})]
    elif case == "huge-int":
        edge = [Sample("P1", 1.0, {"pressure": 10**400})]  # float() overflows: both raise
    elif case == "nan-stamp":
        edge = [Sample("P1", math.nan, {"pressure": 1.0})]
    elif case == "inf-stamp":
        edge = [Sample("P1", -math.inf, {"pressure": 1.0})]
    elif case == "int-stamp":
        edge = [Sample("P1", 1_700_000_000, {"pressure": 1.0})]
    elif case == "str-value":
        edge = [Sample("P1", 1.0, {"pressure": "1.5"})]  # type: ignore[dict-item]
    elif case == "mapping-proxy":
        edge = [Sample("P1", 1.0, MappingProxyType({"pressure": 1.5}))]
    elif case == "empty":
        edge = [Sample("P1", 1.0, {}), Sample("ghost", 2.0, {})]
    elif case == "unknown-quality":
        edge = [Sample("P1", 1.0, {"pressure": 1.5}, "bogus")]  # type: ignore[arg-type]
    elif case == "newline-name":
        edge = [Sample("P1", 1.0, {"pres\nsure": 1.5})]
    elif case == "newline-device":
        edge = [Sample("new\nline", 1.0, {"pressure": 1.5})]
    else:
        edge = [Sample("P1", 1.0, {"bad\udc80": 1.5})]  # no UTF-8 for it: encode_body raises either way
    for batch in (edge, ordinary + edge, edge + ordinary + edge):
        c_enc, py_enc = LineEncoder(site, accelerated=True), LineEncoder(site, accelerated=False)
        assert_same(c_enc, py_enc, batch)
        # a second time: the templates exist now
        assert_same(c_enc, py_enc, batch)


def test_stamps_round_as_python_does(site: Site) -> None:
    """round(ts * 1_000_000): halves go to even, exactly as Python's round()."""
    rng = random.Random(5)
    enc = LineEncoder(site, accelerated=True)
    stamps = [(n + 0.5) / 1e6 for n in range(-2000, 2000)]
    stamps += [(rng.randint(0, 2 * 10**15) + 0.5) / 1e6 for _ in range(5000)]
    stamps += [s for s in EDGE_STAMPS if abs(s) < 2**63 / 1e6]
    body = enc.encode_body([Sample("M1", ts, {"voltage_l1": 1.0}) for ts in stamps])
    assert body is not None
    got = [int(line.rsplit(b" ", 1)[1]) for line in body[0].split(b"\n")]
    assert got == [round(ts * 1_000_000) for ts in stamps]


def test_past_the_template_limit(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the template dict full, new quantity sets are not kept: C cannot find them, Python writes them."""
    monkeypatch.setattr(lineproto, "MAX_TEMPLATES", 3)
    rng = random.Random(8)
    c_enc, py_enc = LineEncoder(site, accelerated=True), LineEncoder(site, accelerated=False)
    spy = Spy(c_enc)
    for _ in range(50):
        assert_same(c_enc, py_enc, [random_sample(rng, clean=True) for _ in range(20)])
    assert len(c_enc._templates) == 3 and spy.missing > 0


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_no_reference_leaks(site: Site) -> None:
    """A million calls through every outcome (a body, the Python path, a missing template, a bad value) must
    not grow the process: one leaked object a call would be tens of megabytes."""
    from gateway.sink import _lineenc

    enc = LineEncoder(site, accelerated=True)
    good = [Sample("M1", 1_700_000_000.25, {"voltage_l1": 230.17, "current_l1": 1e-7, "x": 7, "y": True})]
    enc.encode_body(good)
    enc._template("M1", ("voltage_l1",))
    batches = [
        good,
        [*good, Sample("M1", 1.0, {"voltage_l1": math.nan})],  # NaN: the Python path
        [*good, Sample("never", 1.0, {"a": 1.0})],  # no template: an index
        [*good, Sample("M1", 1.0, {"voltage_l1": 10**400})],  # float() overflows
        [*good, Sample("M1", 1e300, {"voltage_l1": 1.0})],  # stamp past 64 bits
        [*good, Sample("M1", 1.0, {"voltage_l1": 1.0}, "bogus")],  # type: ignore[arg-type]
    ]
    templates = enc._templates
    results = [_lineenc.encode(b, templates, QUALITY_CODES) for b in batches]
    assert isinstance(results[0], tuple) and results[1] is None and results[2] == 1
    assert results[3] is None and results[4] is None and isinstance(results[5], tuple)

    def run(n: int) -> None:
        encode = _lineenc.encode
        for _ in range(n):
            for b in batches:
                encode(b, templates, QUALITY_CODES)

    run(20_000)  # warm: allocator pools, caches
    before = rss()
    run(1_000_000 // len(batches))
    grown = rss() - before
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over a million encodes"
