"""64-bit layouts as byte vectors (ABCD/CDAB/BADC/DCBA extended to eight bytes), and the float limit."""

from __future__ import annotations

import struct

import pytest

from drivers.modbus.codec import decode, encode
from gateway.config.profile import Point

VALUE = 0x0102030405060708
LAYOUTS = [
    ("big", "big", [0x0102, 0x0304, 0x0506, 0x0708]),  # ABCDEFGH
    ("big", "little", [0x0708, 0x0506, 0x0304, 0x0102]),  # GHEFCDAB
    ("little", "big", [0x0201, 0x0403, 0x0605, 0x0807]),  # BADCFEHG
    ("little", "little", [0x0807, 0x0605, 0x0403, 0x0201]),  # HGFEDCBA
]


def point(type_: str, byte_order: str, word_order: str) -> Point:
    return Point.model_validate(
        {"quantity": "x", "function": "holding", "address": 0, "type": type_,
         "byte_order": byte_order, "word_order": word_order}
    )  # fmt: skip


@pytest.mark.parametrize(("byte_order", "word_order", "words"), LAYOUTS)
def test_uint64_layouts(byte_order: str, word_order: str, words: list[int]) -> None:
    p = point("uint64", byte_order, word_order)
    assert decode(p, words) == float(VALUE)
    # VALUE is above 2**53: as a float it is rounded (to a multiple of 16), so it does not encode back to
    # the same words; the codec documents this limit of float-only Sample values.
    assert int(float(VALUE)) != VALUE
    assert encode(p, float(VALUE)) != words
    assert decode(p, encode(p, float(VALUE))) == float(VALUE)


@pytest.mark.parametrize(("byte_order", "word_order", "words"), LAYOUTS)
def test_float64_layouts(byte_order: str, word_order: str, words: list[int]) -> None:
    # The same eight bytes read as a double.
    (expected,) = struct.unpack(">d", VALUE.to_bytes(8, "big"))
    assert decode(point("float64", byte_order, word_order), words) == expected
    assert encode(point("float64", byte_order, word_order), expected) == words


def test_int64_exact_below_2_53_and_negative() -> None:
    p = point("int64", "big", "big")
    for v in (-(2**53) + 1, -1, 0, 2**53 - 1):
        assert decode(p, encode(p, float(v))) == float(v)
    assert encode(p, -1.0) == [0xFFFF] * 4


def test_uint64_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outside uint64 range"):
        encode(point("uint64", "big", "big"), -1.0)
    with pytest.raises(ValueError, match="outside int64 range"):
        encode(point("int64", "big", "big"), 2.0**63)
