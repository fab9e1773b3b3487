"""bench/run_all.py --smoke (what `make bench` runs, at tiny sizes and all parts at once): one table with
every row, and a JSON file with every figure, the date, the machine and the meter server. Values are
never judged; a row may be n/a only where smoke mode skips a peer (ThingsBoard) or the row has no
baseline by design."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench/run_all.py"
FIGURES = 15  # rows of the table


# every part of the bench at tiny sizes, side by side: minutes on a loaded 2-core machine
@pytest.mark.timeout(600)
def test_run_all_smoke_prints_the_table_and_writes_every_row(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    head = lines.index("| figure | meterwatch | baseline | ratio | baseline is |")
    table = [line for line in lines[head + 2 :] if line.startswith("| ")]
    assert len(table) == FIGURES, r.stdout[-5000:]

    dated = [p for p in tmp_path.iterdir() if p.name != "latest.json"]
    assert len(dated) == 1 and dated[0].suffix == ".json"
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc == json.loads(dated[0].read_text())
    assert doc["smoke"] is True and doc["date"].startswith(dated[0].name[:10])
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["cpu_model"] and doc["machine"]["python"]
    assert doc["meter_server"].startswith("cmeter")
    assert doc["meter_server_limit"]["requests_per_s"] > 0
    assert {p: v["error"] for p, v in doc["parts"].items() if v["error"]} == {}
    assert len(doc["rows"]) == FIGURES
    for row in doc["rows"]:
        assert row["figure"] and not row["meterwatch"].startswith(("n/a", "FAILED")), row
        if "ThingsBoard" in row["baseline_is"]:
            assert row["baseline"].startswith("n/a (skipped"), row
        elif row["baseline_is"].startswith("none"):
            assert row["baseline"] == "none"
        else:
            assert not row["baseline"].startswith(("n/a", "FAILED")), row
            assert row["ratio_value"] > 0, row
