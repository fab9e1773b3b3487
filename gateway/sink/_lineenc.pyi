from collections.abc import Sequence

from gateway.core.types import Quality, Sample

def encode(
    samples: Sequence[Sample],
    templates: dict[tuple[str, tuple[str, ...]], tuple[str, ...]],
    quality_codes: dict[Quality, int],
    /,
) -> tuple[bytes, int] | int | None: ...
def format_float(v: float, /) -> str: ...
