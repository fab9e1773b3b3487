"""Planner figures: per profile, requests per cycle and registers per request, merged vs one read per value.

Also the time one device's cycle holds a 9600-baud RTU line both ways, from the planner's own estimate.
Prints one human line per profile and one JSON line with every figure.
"""

from __future__ import annotations

import json

from drivers.modbus.planner import plan_reads, request_time
from drivers.modbus.spec import LineSpec
from gateway.config.profile import builtin_profiles


def main() -> None:
    line = LineSpec(id="bench", transport="rtu", device="/dev/null", baudrate=9600)
    figures: dict[str, dict[str, float]] = {}
    for name, profile in sorted(builtin_profiles().items()):
        merged = plan_reads(profile.points, 1)
        single = plan_reads(profile.points, 1, one_read_per_value=True)
        t_merged = sum(request_time(line, r) for r in merged)
        t_single = sum(request_time(line, r) for r in single)
        figures[name] = {
            "values": len(profile.points),
            "requests": len(merged),
            "registers_per_request": round(sum(r.count for r in merged) / len(merged), 1),
            "requests_one_per_value": len(single),
            "registers_per_request_one_per_value": round(sum(r.count for r in single) / len(single), 1),
            "cycle_ms_9600": round(t_merged * 1000, 1),
            "cycle_ms_9600_one_per_value": round(t_single * 1000, 1),
        }
        f = figures[name]
        print(
            f"{name:15s} {f['values']:3.0f} values: {f['requests']:.0f} requests x "
            f"{f['registers_per_request']} regs (one per value: {f['requests_one_per_value']:.0f} x "
            f"{f['registers_per_request_one_per_value']}); 9600 baud cycle {f['cycle_ms_9600']} ms vs "
            f"{f['cycle_ms_9600_one_per_value']} ms"
        )
    print(json.dumps({"bench": "planner", "profiles": figures}))


if __name__ == "__main__":
    main()
