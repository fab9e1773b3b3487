"""Rules engine figures: samples per second through feed + tick with 1,000 devices x 10 quantities and the
default rules, engine memory per device (tracemalloc), and the live detection latency of
bench/rules_live.py (skipped with --no-live; reported absent when that file is not there).

The synthetic site: 10 buildings of 100 devices (1 main meter, 96 unit meters, a zone pressure sensor, a
flow meter and a pump), each polled every 10 s with staggered phases; the clock ticks every virtual second.
Half-way through, building B00 loses power for two minutes (every meter reads 0 V), so the figure includes
alert transitions and correlation into one domain outage, not only the quiet path.
Prints one human line per figure and one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# run as `python bench/rules.py`, this file's folder comes first on sys.path and its name hides the
# `rules` package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.modules.pop("rules", None)

from gateway.config.default_rules import effective_rules  # noqa: E402
from gateway.core.types import Sample  # noqa: E402
from rules.compile import compile_rules  # noqa: E402
from rules.engine import Engine  # noqa: E402
from rules.topology import DeviceNode, DomainNode, Topology  # noqa: E402

INTERVAL = 10.0
PER_BUILDING = 100
T0 = 1_772_416_800.0
LIVE = Path(__file__).with_name("rules_live.py")


def role_of(n: int) -> str:
    return {0: "main_power", 1: "zone_pressure", 2: "flow", 3: "pump"}.get(n, "unit_power")


def build_topology(devices: int) -> Topology:
    nodes: dict[str, DeviceNode] = {}
    domains: dict[str, DomainNode] = {}
    households: dict[str, int] = {}
    for b in range((devices + PER_BUILDING - 1) // PER_BUILDING):
        bid = f"B{b:02d}"
        households[bid] = 96
        domains[f"{bid}-power"] = DomainNode(f"{bid}-power", "power", bid, 96)
        domains[f"{bid}-water"] = DomainNode(f"{bid}-water", "water", bid, 96)
        for n in range(min(PER_BUILDING, devices - b * PER_BUILDING)):
            role = role_of(n)
            water = role in ("zone_pressure", "flow")
            dom = f"{bid}-water" if water else f"{bid}-power"
            did = f"{bid}-d{n:03d}"
            nodes[did] = DeviceNode(
                id=did, building=bid, domain=dom, role=role, households=1 if role == "unit_power" else 0,
                power_domain=None, line=f"{bid}-line{n // 32}", line_power=None, interval=INTERVAL,
            )  # fmt: skip
    return Topology("bench", "Asia/Shanghai", nodes, domains, households)


def values(role: str, volts: float, i: int) -> dict[str, float]:
    """Ten quantities, as a three-phase meter reports them; sensors swap one for their own quantity."""
    v = {
        "voltage_l1": volts, "voltage_l2": volts + 0.8, "voltage_l3": volts - 0.6,
        "current_l1": 4.0 + (i % 7) * 0.1, "current_l2": 3.9, "current_l3": 4.2,
        "power_total": 2700.0, "energy_total": 12_345.0 + i, "frequency": 50.0, "power_factor": 0.97,
    }  # fmt: skip
    if role == "zone_pressure":
        v["pressure"] = 2.8 - (i % 5) * 0.01
    elif role == "flow":
        v["flow"] = 6.0 + (i % 3) * 0.1
    return v


def samples(topo: Topology, seconds: int, fault: bool) -> Iterator[tuple[float, list[Sample]]]:
    """(second, samples due in that second); every device once per INTERVAL, phases staggered."""
    devs = list(topo.devices.values())
    cut_from, cut_to = seconds // 2, seconds // 2 + 120
    slots: list[list[DeviceNode]] = [[] for _ in range(int(INTERVAL))]
    for k, d in enumerate(devs):
        slots[k % int(INTERVAL)].append(d)
    for s in range(seconds):
        t = T0 + s
        dark = fault and cut_from <= s < cut_to
        due = [
            Sample(d.id, t, values(d.role, 0.0 if dark and d.building == "B00" else 230.0, s))
            for d in slots[s % int(INTERVAL)]
        ]
        yield t, due


def build_engine(devices: int) -> Engine:
    topo = build_topology(devices)
    kinds = compile_rules(effective_rules(None), topo)
    return Engine(topo, kinds, start=T0)


def throughput(devices: int, seconds: int, fault: bool) -> dict[str, Any]:
    engine = build_engine(devices)
    # build the samples first: the figure is the engine's, not the generator's
    batches = list(samples(engine.topo, seconds, fault))
    n = sum(len(b) for _, b in batches)
    transitions = 0
    gc.collect()
    t_start = time.perf_counter()
    for t, batch in batches:
        for s in batch:
            transitions += len(engine.feed(s))
        transitions += len(engine.tick(t))
    elapsed = time.perf_counter() - t_start
    kinds: dict[str, int] = {}
    for inc in engine.incidents.values():
        k = f"{inc.category} {inc.scope.partition(':')[0]} {inc.state}"
        kinds[k] = kinds.get(k, 0) + 1
    return {
        "devices": devices,
        "quantities_per_sample": 10,
        "virtual_seconds": seconds,
        "samples": n,
        "ticks": seconds,
        "elapsed_s": round(elapsed, 3),
        "samples_per_s": round(n / elapsed),
        "transitions": transitions,
        "incidents": kinds,
    }


def memory(devices: int, seconds: int) -> dict[str, Any]:
    """Engine state once every device has reported a few times (the quiet steady state)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    engine = build_engine(devices)
    built = tracemalloc.get_traced_memory()[0]
    for t, batch in samples(engine.topo, seconds, fault=False):
        for s in batch:
            engine.feed(s)
        engine.tick(t)
    gc.collect()
    steady = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "engine_bytes_built": built - base,
        "engine_bytes_steady": steady - base,
        "bytes_per_device": round((steady - base) / devices),
    }


def live(runs: int) -> dict[str, Any] | None:
    if not LIVE.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_rules_live", LIVE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    measure = getattr(mod, "measure", None)
    if measure is None:
        return None
    result: dict[str, Any] = measure(runs)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=600, help="virtual seconds to replay")
    ap.add_argument("--no-fault", action="store_true", help="only the quiet path (no building outage)")
    ap.add_argument("--no-live", action="store_true", help="skip the live end-to-end detection latency")
    ap.add_argument("--runs", type=int, default=20, help="live runs")
    args = ap.parse_args()

    tp = throughput(args.devices, args.seconds, not args.no_fault)
    print(
        f"rules engine: {tp['samples']} samples ({tp['devices']} devices x 10 quantities, default rules, "
        f"{tp['virtual_seconds']} s virtual, tick every second"
        f"{', one building outage' if not args.no_fault else ''}) in {tp['elapsed_s']} s: "
        f"{tp['samples_per_s']} samples/s; {tp['transitions']} transitions, incidents {tp['incidents']}"
    )
    mem = memory(args.devices, 120)
    print(
        f"rules engine memory: {mem['engine_bytes_steady'] / 1e6:.1f} MB for {args.devices} devices "
        f"after 120 s of samples = {mem['bytes_per_device']} bytes per device (tracemalloc)"
    )
    lv: dict[str, Any] | None = None
    if args.no_live:
        print("live detection latency: skipped (--no-live)")
    else:
        lv = live(args.runs)
        if lv is None:
            print(f"live detection latency: {LIVE.name} is absent (no measure(runs) to call)")
        else:
            print(
                f"live detection latency over {lv.get('runs')} runs: power cut -> incident median "
                f"{lv.get('detect_median_s')} s, p95 {lv.get('detect_p95_s')} s "
                f"(budget {lv.get('budget_s')} s)"
            )
    print(json.dumps({"bench": "rules", "throughput": tp, "memory": mem, "live": lv}))


if __name__ == "__main__":
    main()
