"""Time to first readings of `make demo`: how long a new user waits until the live view shows every device up.

Each run starts the demo as `make demo` does (`python -m gateway.cli.demo SITE --plain`) on a copy of
deploy/examples/compound.yaml whose ports and pseudo-terminal paths are moved to free ones, watches its
output, and stops it with SIGINT once a readings block shows every device up with values. Three figures:

- start-up: process start -> the demo's first line (interpreter and imports; varies with the machine's load)
- all up: the demo's first line -> the first printed readings block with every device up and showing values
  (the view prints a block as soon as every device has reported, then one every 5 s, so this is rounded up
  to the next block)
- first reading: the demo's own figure, gateway start -> first reading on the bus ("demo: first reading")

Prints one human line and one JSON line (median and max over the runs). Nothing is asserted: the figures
depend on the machine and its load. tests/gateway/cli/test_demo.py uses the helpers here and only waits.

    .venv/bin/python bench/demo_start.py [--runs 3] [--timeout 120]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/demo_start.py`
    sys.path.insert(0, str(ROOT))

from simulators.ports import free_port  # noqa: E402

EXAMPLE = ROOT / "deploy/examples/compound.yaml"
BLOCK = re.compile(r"^--- \d\d:\d\d:\d\d live readings$")
FIRST_READING = re.compile(r"^demo: first reading (\d+(?:\.\d+)?)s after start$")


def example_on_free_ports(directory: Path) -> tuple[Path, list[str]]:
    """Copy the example site into `directory` with free ports and pty paths there; (path, device ids)."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for line in doc["lines"]:
        if line["transport"] == "rtu":
            line["device"] = str(directory / f"tty-{line['id']}")
        else:
            line["port"] = free_port()
    doc["mqtt"]["port"] = free_port()
    doc["http"] = {"port": 0}
    path = directory / "compound.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, [d["id"] for d in doc["devices"]]


def readings_blocks(lines: list[str]) -> list[dict[str, str]]:
    """Each complete `--- HH:MM:SS live readings` block as device -> the rest of its line."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in lines:
        if BLOCK.match(line):
            current = {}
            blocks.append(current)
        elif current is not None and line and not line.startswith("demo:"):
            device, _, rest = line.partition(" ")
            current[device] = rest.strip()
        else:
            current = None
    return blocks


def all_up_with_values(devices: list[str]) -> Callable[[list[str]], bool]:
    """A check on the demo's output: some readings block shows every device up, each with a value."""

    def check(lines: list[str]) -> bool:
        for block in readings_blocks(lines):
            if set(block) >= set(devices) and all(
                block[d].startswith("up ") and "=" in block[d].split("age=", 1)[1] for d in devices
            ):
                return True
        return False

    return check


class DemoProcess:
    """The demo in its own process group, stdout collected line by line, each line with its arrival time."""

    def __init__(self, site: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.demo", str(site), "--plain"],
            cwd=ROOT,  # `make demo` runs from the repository
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.out.append((time.monotonic(), line.rstrip("\n")))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.err.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return [text for _, text in self.out]

    def when(self, check: Callable[[list[str]], bool], timeout: float, what: str) -> float:
        """The arrival time (monotonic) of the first output line after which `check` holds (once it holds,
        it holds for every longer output, so each prefix is checked once)."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            with self._lock:
                out = list(self.out)
            for i in range(checked, len(out)):
                if check([text for _, text in out[: i + 1]]):
                    return out[i][0]
            checked = len(out)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo exited ({self.proc.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C (SIGINT to the group), as a user stops the demo; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for t in self._readers:
            t.join(timeout=5)
        return self.proc.returncode

    def tail(self) -> str:
        with self._lock:
            return "\n".join([t for _, t in self.out[-40:]] + ["--- stderr"] + self.err[-40:])


def one_run(timeout: float) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory(prefix="mw-demo-start-") as tmp:
        site, devices = example_on_free_ports(Path(tmp))
        demo = DemoProcess(site)
        try:
            first_line = demo.when(
                lambda lines: any(ln.startswith("demo: ") for ln in lines), timeout, "the demo's first line"
            )
            all_up = demo.when(all_up_with_values(devices), timeout, "every device up")
        finally:
            code = demo.stop()
        if code != 0:
            raise RuntimeError(f"the demo exited {code} on SIGINT:\n{demo.tail()}")
        own = [float(m.group(1)) for ln in demo.lines() if (m := FIRST_READING.match(ln))]
        return {
            "startup_s": round(first_line - demo.started, 3),
            "all_up_s": round(all_up - first_line, 3),
            "first_reading_s": own[0] if own else None,
        }


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def measure(runs: int, timeout: float) -> dict[str, Any]:
    results = [one_run(timeout) for _ in range(runs)]
    figures: dict[str, Any] = {"runs": runs}
    for key in ("startup_s", "all_up_s", "first_reading_s"):
        values = [v for r in results if (v := r[key]) is not None]
        figures[key] = summary(values)
    figures["each"] = results
    return figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on a run after this many seconds")
    args = ap.parse_args(argv)
    r = measure(args.runs, args.timeout)
    s, u, f = r["startup_s"], r["all_up_s"], r["first_reading_s"]
    print(
        f"demo start over {r['runs']} runs ({EXAMPLE.relative_to(ROOT)}): every device up in the live view "
        f"median {u['median']}s (max {u['max']}s) after the demo's first line; start-up to that line median "
        f"{s['median']}s (max {s['max']}s); first reading median {f['median']}s after the gateway started"
    )
    print(json.dumps({"bench": "demo_start", **r}))


if __name__ == "__main__":
    main()
