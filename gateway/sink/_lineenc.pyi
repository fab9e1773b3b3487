from collections.abc import Sequence

from gateway.core.types import Sample

def encode(
    samples: Sequence[Sample],
    templates: dict[tuple[str, tuple[str, ...]], tuple[str, ...]],
    quality_codes: dict[str, int],
    /,
) -> tuple[bytes, int] | int | None: ...
def format_float(v: float, /) -> str: ...
