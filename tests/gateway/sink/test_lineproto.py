"""The line protocol the encoder writes matches the original per-sample encoder (kept here as the reference)
while the fast path builds a batch's lines from per-device templates and one orjson call for all numbers:
escaping of tags and field keys, integer quality, float fields from ints and bools, NaN and infinities
skipped and counted, microsecond stamps, braces in names (the template is a str.format string), unknown
devices. Lines are byte-identical to the reference's except where a float needs an exponent: there orjson
spells it otherwise (1.5e-7, 0.00001 for repr's 1.5e-07, 1e-05), and the test checks the text is a valid
line-protocol float that reads back as exactly the same double."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from gateway.config import Site, load_site
from gateway.core.types import Quality, Sample
from gateway.sink.lineproto import (
    QUALITY_CODES,
    QUALITY_FIELD,
    LineEncoder,
    SeriesKey,
    _escape_key,
    field_name,
)

SITE = """\
site: {id: t1}
buildings:
  - {id: B1, domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]}
lines:
  - {id: l1, transport: tcp, host: 127.0.0.1, port: 1502}
devices:
  - {id: M1, building: B1, domain: B1-power, line: l1, unit: 1, profile: sdm630}
  - {id: P1, building: B1, domain: B1-water, line: l1, unit: 2, profile: rs485-pressure}
  - {id: T1, building: B1, role: tank, source: mqtt}
"""


class Reference:
    """The encoder as it was before the templates (commit 6de9ac5): one f-string per field per sample."""

    def __init__(self, enc: LineEncoder) -> None:
        self.site_id = enc.site_id
        self._prefix = {dev: key.prefix() for dev, key in enc.keys.items()}

    def encode(self, sample: Sample) -> str | None:
        prefix = self._prefix.get(sample.device)
        if prefix is None:
            key = SeriesKey("other", (("site", self.site_id), ("device", sample.device)))
            prefix = self._prefix[sample.device] = key.prefix()
        fields = []
        for quantity, value in sample.values.items():
            v = float(value)
            if not math.isfinite(v):
                continue
            fields.append(f"{_escape_key(field_name(quantity))}={v!r}")
        if not fields:
            return None
        fields.append(f"{QUALITY_FIELD}={QUALITY_CODES.get(sample.quality, 0)}i")
        return f"{prefix} {','.join(fields)} {round(sample.ts * 1_000_000)}"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(SITE)
    return load_site(p)


ODD_NAMES = ["voltage_l1", "a b", "a,b", "a=b", "back\\slash", "{brace}", "}{", "{!r}", "{0}", "ünï"]
ODD_VALUES: list[float] = [0.0, -0.0, 1.0, 1e16, 1e-7, 123.456, -5e-324, 1.7976931348623157e308, 0.1 + 0.2]
QUALITIES: list[Quality] = ["good", "stale", "comm_error", "decode_error"]


def random_sample(rng: random.Random, devices: list[str]) -> Sample:
    names = rng.sample(ODD_NAMES, rng.randint(0, 4))
    values: dict[str, float] = {}
    for name in names:
        kind = rng.random()
        if kind < 0.5:
            values[name] = rng.uniform(-1e6, 1e6)
        elif kind < 0.7:
            values[name] = rng.choice(ODD_VALUES)
        elif kind < 0.8:
            values[name] = rng.randint(-1000, 1000)  # an int from a JSON payload: written as a float
        elif kind < 0.85:
            values[name] = rng.choice([True, False])
        else:
            values[name] = rng.choice([math.nan, math.inf, -math.inf])
    ts = rng.choice([1_700_000_000.123456, 1_700_000_000.0000005, 0.0, rng.uniform(1e9, 2e9)])
    return Sample(rng.choice(devices), ts, values, rng.choice(QUALITIES))


# A float in InfluxDB's line protocol (docs: "Line protocol", field value types): digits with a point or an
# exponent, so that it can never be taken for an integer (those end in i anyway).
FLOAT_TEXT = re.compile(r"-?(?:\d+\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+)")


def assert_same_line(got: str | None, want: str | None, sample: Sample) -> None:
    """`got` is `want` but for the spelling of floats written with an exponent: each such value must be a
    valid line-protocol float equal to the reference's, bit for bit (the sign of zero too)."""
    if got == want:
        return
    assert got is not None and want is not None, (got, want, sample)
    # the reference's line with every value replaced by a capture: the rest must match byte for byte
    pattern, pos, expected = "", 0, []
    for quantity, value in sample.values.items():
        v = float(value)
        if not math.isfinite(v):
            continue
        text = f"{_escape_key(field_name(quantity))}={v!r}"
        at = want.index(text, pos)
        pattern += re.escape(want[pos : at + len(text) - len(repr(v))]) + r"([^,\s]+)"
        pos = at + len(text)
        expected.append(v)
    match = re.fullmatch(pattern + re.escape(want[pos:]), got)
    assert match is not None, (got, want)
    for text, v in zip(match.groups(), expected, strict=True):
        assert FLOAT_TEXT.fullmatch(text), f"{text!r} is not a line-protocol float"
        assert float(text) == v and math.copysign(1, float(text)) == math.copysign(1, v), (text, v)
        if "e" not in repr(v):
            assert text == repr(v), "without an exponent the text is repr's"


def test_lines_match_the_reference(site: Site) -> None:
    rng = random.Random(11)
    enc = LineEncoder(site)
    ref = Reference(LineEncoder(site))
    devices = ["M1", "P1", "T1", "ghost", "odd device,x=y", "{brace}"]
    exponents = 0
    for _ in range(20_000):
        s = random_sample(rng, devices)
        got, want = enc.encode(s), ref.encode(s)
        exponents += got != want
        assert_same_line(got, want, s)
    assert exponents > 100  # the exponent spellings were met and checked


def test_a_batch_gives_the_lines_of_its_samples_one_by_one(site: Site) -> None:
    """encode_many is what the sink uses; encode (one sample) must give the same text, since tests compare
    what the spool holds with encode's lines. Batches with NaN or infinities take the long way."""
    rng = random.Random(12)
    enc = LineEncoder(site)
    devices = ["M1", "P1", "T1", "ghost", "odd device,x=y", "{brace}"]
    for size in (1, 2, 7, 300):
        for _ in range(30):
            batch = [random_sample(rng, devices) for _ in range(size)]
            one_by_one = [line for s in batch if (line := enc.encode(s)) is not None]
            assert enc.encode_many(batch) == one_by_one


def test_a_newline_in_a_name_keeps_the_lines_apart(site: Site) -> None:
    """The batch is cut into lines at newlines: a name holding one (no store accepts it, but it must not
    shift the other samples' lines) takes the way one sample at a time."""
    enc = LineEncoder(site)
    lines = enc.encode_many([Sample("M1", 1.0, {"a\nb": 1.5}), Sample("T1", 2.0, {"x": 2.5})])
    assert lines == [
        "power,building=B1,device=M1,domain=B1-power,profile=sdm630,site=t1 a\nb=1.5,quality=0i 1000000",
        "level,building=B1,device=T1,profile=mqtt,site=t1 x=2.5,quality=0i 2000000",
    ]


def test_floats_stay_floats_and_read_back_exactly(site: Site) -> None:
    enc = LineEncoder(site)
    values = {"a": 230.0, "b": 1e16, "c": 1e-5, "d": 1.5e-7, "e": 5e-324, "f": -0.0, "g": 7, "h": True}
    line = enc.encode(Sample("M1", 1.0, values))
    assert line is not None
    fields = dict(f.split("=") for f in line.split(" ")[1].split(","))
    assert fields["a"] == "230.0" and fields["g"] == "7.0" and fields["h"] == "1.0" and fields["f"] == "-0.0"
    for k, v in values.items():
        assert FLOAT_TEXT.fullmatch(fields[k]) and float(fields[k]) == float(v), (k, fields[k])


def test_a_stamp_past_64_bits_is_still_written(site: Site) -> None:
    """orjson refuses integers past 64 bits: a sample from a broken clock must not fail the batch."""
    enc = LineEncoder(site)
    lines = enc.encode_many([Sample("M1", 1.0, {"a": 1.0}), Sample("M1", 1e20, {"a": 2.0})])
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["1000000", str(round(1e20 * 1_000_000))]


def test_the_same_quantities_in_another_order_keep_their_order(site: Site) -> None:
    enc = LineEncoder(site)
    a = enc.encode(Sample("M1", 1.0, {"x": 1.0, "y": 2.0}))
    b = enc.encode(Sample("M1", 1.0, {"y": 2.0, "x": 1.0}))
    assert a is not None and b is not None
    assert a.split(" ")[1] == "x=1.0,y=2.0,quality=0i" and b.split(" ")[1] == "y=2.0,x=1.0,quality=0i"


def test_non_finite_values_are_skipped_and_counted(site: Site) -> None:
    enc = LineEncoder(site)
    line = enc.encode(Sample("M1", 2.5, {"a": math.nan, "b": 3, "c": math.inf}, "stale"))
    assert (
        line == "power,building=B1,device=M1,domain=B1-power,profile=sdm630,site=t1 b=3.0,quality=1i 2500000"
    )
    assert enc.skipped_values == 2
    assert enc.encode(Sample("M1", 2.5, {"a": -math.inf})) is None
    assert enc.encode(Sample("M1", 2.5, {})) is None
    # finite values whose sum overflows take the long way and lose nothing
    big = 1.7976931348623157e308
    assert enc.encode(Sample("M1", 1.0, {"a": big, "b": big})) == (
        "power,building=B1,device=M1,domain=B1-power,profile=sdm630,site=t1"
        " a=1.7976931348623157e+308,b=1.7976931348623157e+308,quality=0i 1000000"
    )
    assert enc.skipped_values == 3


def test_an_unknown_device_is_counted_once_and_still_stored(site: Site) -> None:
    enc = LineEncoder(site)
    for _ in range(3):
        assert (
            enc.encode(Sample("ghost {x}", 1.0, {"v": 1.0}))
            == r"other,device=ghost\ {x},site=t1 v=1.0,quality=0i 1000000"
        )
    assert enc.unknown_devices == 1


def test_encode_body_is_the_lines_joined_as_the_spool_stores_them(site: Site) -> None:
    """encode_body (the intake's path) gives exactly encode_many's lines joined by newlines, UTF-8, and
    their count, for batches that take the fast way and the long way (NaN, infinities, empty values)."""
    rng = random.Random(7)
    enc = LineEncoder(site)
    devices = ["M1", "P1", "T1", "ghost", "odd device,x=y", "{brace}"]
    for size in (1, 3, 50):
        for _ in range(20):
            batch = [random_sample(rng, devices) for _ in range(size)]
            lines = enc.encode_many(batch)
            assert enc.encode_body(batch) == ("\n".join(lines).encode("utf-8"), len(lines))
    assert enc.encode_body([Sample("M1", 1.0, {})]) == (b"", 0)
    assert enc.encode_body([Sample("M1", 1.0, {"a": math.nan})]) == (b"", 0)


def test_encode_body_declines_a_batch_whose_line_holds_a_newline(site: Site) -> None:
    """Such a body could not give its lines back: the caller stores encode_many's lines one by one."""
    enc = LineEncoder(site)
    batch = [Sample("M1", 1.0, {"a\nb": 1.5}), Sample("T1", 2.0, {"x": 2.5})]
    assert enc.encode_body(batch) is None
    assert len(enc.encode_many(batch)) == 2
