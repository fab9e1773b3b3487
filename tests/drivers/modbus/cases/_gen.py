"""Writes the expected files of tests/drivers/modbus/cases; device.yaml, profile.yaml and registers.yaml are
written by hand and stay as they are.

Run `.venv/bin/python tests/drivers/modbus/cases/_gen.py [case ...]` after adding a case or changing the
planner or the decoding on purpose, then read `git diff` and check every changed value by hand against the
datasheet values noted in registers.yaml and the profile: a golden file is only as good as that check. An
`errors:` list that still matches is kept as it is, so it can be trimmed by hand to the words that matter.

What is written, per case folder: expected_samples.yaml when it has registers.yaml; expected_plan.yaml when it
already has one or has no registers.yaml (a new case is a plan case unless it brings a dump).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from tests.drivers.modbus.test_golden import (
    ALL,
    CASES,
    HEADER,
    errors_mismatch,
    plan_of,
    render_plan,
    render_samples,
    samples_of,
)


def generate(case: str) -> list[str]:
    d = CASES / case
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        path = d / "expected_plan.yaml"
        if path.exists() or not (d / "registers.yaml").exists():
            plan = plan_of(d, Path(tmp))
            old = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
            if "errors" in old and errors_mismatch(old, plan) is None:
                written.append("expected_plan.yaml kept (its error substrings still match)")
            else:
                path.write_text(HEADER.format(what="device.yaml") + render_plan(plan))
                written.append("expected_plan.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        if (d / "registers.yaml").exists():
            text = HEADER.format(what="device.yaml and registers.yaml") + render_samples(
                samples_of(d, Path(tmp))
            )
            (d / "expected_samples.yaml").write_text(text)
            written.append("expected_samples.yaml")
    return written


if __name__ == "__main__":
    logging.getLogger("meterwatch").setLevel(
        logging.ERROR
    )  # the poller's warnings about the cases' sentinels
    wanted = sys.argv[1:] or ALL
    unknown = [c for c in wanted if c not in ALL]
    if unknown:
        sys.exit(f"no such case (a folder with device.yaml): {', '.join(unknown)}")
    for case in wanted:
        print(f"{case}: {', '.join(generate(case))}")
