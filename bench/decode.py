"""Decoding cost per value: codec.decode (the reference, as the poller used it) against the compiled plans.

For every shipped profile, the reads the poller plans for it, answered with realistic register contents
(each point's encoded value: meter-like readings with one to three decimals; decimals registers set), are
decoded in four WAYS, in the same process and run, interleaved round by round:
- reference: codec.decode per point on its slice of the words, as poller._publish did before the plans;
- plan from data: ReadPlan.decode on the answer's bytes (the lean TCP path gives these);
- plan from words: ReadPlan.decode_words on the register list (the pymodbus path gives these);
- floor: one precompiled struct unpack of the answer per read, nothing else (what no decoder can beat).

Figures are microseconds of CPU time per decoded value, the best of --rounds rounds (the least disturbed by
other processes on the machine), and each way's ratio to the reference. Prints one human line per profile
and way, a total, and one JSON line with every figure. Nothing is asserted.

Measured on the shared 2-core machine at load average 12 (other sessions' tests and a soak running), so
absolute figures are inflated about twofold against the 2.9 us of issue 11's profile; the ratios hold:
reference 5.72 us/value over the 81 values of the six profiles, plan from data 1.72 (3.3x), from words
1.75, one struct unpack 0.09. SDM630 (float32 ABCD, unscaled) 6.25 -> 1.21 (5.2x); DTSU666 (float32
scaled) 5.94 -> 2.72 (2.2x); TUF-2000M (CDAB) 4.52 -> 1.66. What remains of a float32 value is the
reference's rule itself, the shortest decimal that maps back to the same float32 (a %.6g format and a
round trip, more digits when that fails): the struct unpack is 0.06-0.1 us of it.

    .venv/bin/python bench/decode.py [--rounds 7] [--reads 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/decode.py`
    sys.path.insert(0, str(ROOT))

from drivers.modbus.codec import decode, encode  # noqa: E402
from drivers.modbus.decoders import ReadPlan  # noqa: E402
from drivers.modbus.planner import ReadRequest, plan_reads  # noqa: E402
from gateway.config.profile import Profile, builtin_profiles  # noqa: E402

DecimalsKey = tuple[str, int]


def answer(request: ReadRequest, keys: set[DecimalsKey], rng: random.Random) -> list[int]:
    """Register words a meter would send: every point's encoded reading, decimals registers at 2."""
    words = [0] * request.count
    for p in request.points:
        if p.type == "string":
            continue
        d = 2 if p.decimals_register is not None else None
        value = 1.0 if p.type == "bit" else round(rng.uniform(0, 400), rng.randint(1, 3))
        if p.mask is not None:
            value = float(rng.randint(0, 100))
        start = p.pdu - request.address
        words[start : start + p.width] = encode(p, value, d)
    for function, address in keys:
        if function == request.function and request.address <= address < request.end:
            words[address - request.address] = 2
    return words


def reference_way(request: ReadRequest, words: list[int], decimals: dict[DecimalsKey, int]) -> None:
    for p in request.points:  # what poller._publish did per value before the plans
        key = (request.function, p.decimals_register) if p.decimals_register is not None else None
        d = decimals.get(key) if key else None
        decode(p, words[p.pdu - request.address : p.pdu - request.address + p.width], d)


def measure(fn: Callable[[], None], reads: int) -> float:
    """CPU seconds per call of fn over `reads` calls (this process's CPU time: other processes sharing the
    cores slow the wall clock, much less this)."""
    began = time.process_time()
    for _ in range(reads):
        fn()
    return (time.process_time() - began) / reads


WAYS = ("reference", "plan_data", "plan_words", "floor")


def bench_profile(
    profile: Profile, rng: random.Random, rounds: int, reads: int
) -> tuple[dict[str, float], int, int]:
    """Best seconds per cycle (all the profile's register reads) of each way; values and reads per cycle."""
    requests = [r for r in plan_reads(profile.points, unit=1) if not r.is_bits]
    keys: set[DecimalsKey] = {
        (r.function, p.decimals_register)
        for r in requests
        for p in r.points
        if p.decimals_register is not None
    }
    plans = [ReadPlan(r, keys) for r in requests]
    words = [answer(r, keys, rng) for r in requests]
    datas = [struct.pack(f">{len(w)}H", *w) for w in words]
    floors = [struct.Struct(f">{r.count}H") for r in requests]
    values = sum(len(r.points) for r in requests)
    decimals: dict[DecimalsKey, int] = {}
    for plan, data in zip(plans, datas, strict=True):  # decimals known, as after the first cycle
        plan.decode(data, decimals)

    def run_reference() -> None:
        for r, w in zip(requests, words, strict=True):
            reference_way(r, w, decimals)

    def run_plan_data() -> None:
        for plan, data in zip(plans, datas, strict=True):
            plan.decode(data, decimals)

    def run_plan_words() -> None:
        for plan, w in zip(plans, words, strict=True):
            plan.decode_words(w, decimals)

    def run_floor() -> None:
        for s, data in zip(floors, datas, strict=True):
            s.unpack_from(data)

    runs = {"reference": run_reference, "plan_data": run_plan_data, "plan_words": run_plan_words}
    runs["floor"] = run_floor
    best = dict.fromkeys(WAYS, float("inf"))
    cycles = max(1, reads // max(1, len(requests)))
    for _ in range(rounds):
        for way in WAYS:  # interleaved, so a burst of load elsewhere hits every way alike
            best[way] = min(best[way], measure(runs[way], cycles))
    return best, values, len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best of them is reported")
    parser.add_argument("--reads", type=int, default=4000, help="reads decoded per way and round")
    args = parser.parse_args()
    rng = random.Random(11)
    result: dict[str, dict[str, float]] = {}
    totals = dict.fromkeys(WAYS, 0.0)
    total_values = 0
    for name, profile in sorted(builtin_profiles().items()):
        best, values, reads = bench_profile(profile, rng, args.rounds, args.reads)
        per_value = {way: best[way] / values * 1e6 for way in WAYS}
        result[name] = {**per_value, "values": values, "reads": reads}
        for way in WAYS:
            totals[way] += best[way]
        total_values += values
        ratio = per_value["reference"] / per_value["plan_data"]
        print(
            f"{name:14s} {values:3d} values in {reads} reads: "
            f"reference {per_value['reference']:.2f} us/value, "
            f"plan from data {per_value['plan_data']:.3f}, from words {per_value['plan_words']:.3f}, "
            f"struct floor {per_value['floor']:.3f}  ({ratio:.1f}x faster)",
            flush=True,
        )
    overall = {way: totals[way] / total_values * 1e6 for way in WAYS}
    speedup = overall["reference"] / overall["plan_data"]
    print(
        f"all profiles ({total_values} values): reference {overall['reference']:.2f} us/value, "
        f"plan from data {overall['plan_data']:.3f}, from words {overall['plan_words']:.3f}, "
        f"floor {overall['floor']:.3f}: {speedup:.1f}x faster (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        json.dumps(
            {
                "bench": "decode",
                "unit": "us_per_value",
                "overall": overall,
                "speedup_data": speedup,
                "speedup_words": overall["reference"] / overall["plan_words"],
                "profiles": result,
                "rounds": args.rounds,
                "loadavg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
