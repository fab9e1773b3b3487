"""Modbus TCP client cost: requests per client CPU-second, built-in client vs pymodbus vs a raw asyncio loop.

N meters (default 200), each its own Modbus TCP endpoint, are served by small MBAP servers of this file in
`--server-procs` processes of their own (they answer every FC03/FC04 read with fixed registers at once, so
the client side is what is measured). Each client kind runs in a fresh process of its own, one task per
meter reading the SDM630's planned reads (3 FC04 reads, 80 registers) back to back, closed loop, for
`--window` seconds after `--warmup`; its process CPU time over the window gives requests per CPU-second.

- builtin: drivers.modbus.tcp.TcpConnection.read, the gateway's default for Modbus TCP lines (retries,
  reconnects, answer checks, counters; the register payload as bytes);
- pymodbus: drivers.modbus.line.Connection.read with client: pymodbus (the reference path: pymodbus's
  AsyncModbusTcpClient, the checked framer, the line's lock);
- raw: asyncio streams, a struct-packed MBAP + FC04 request, readexactly of the header and the payload,
  nothing checked: the limit of Python here;
- poll-builtin, poll-pymodbus: the whole polling path of the daemon without the bus: one LineActor per
  meter (staggered as the site stagger them) with its DevicePoller decoding every value into a Sample,
  a poll interval of 10 ms so that every cycle runs back to back (the skipped cycles are not queued).

The kinds run in turn, `--rounds` times (A B C A B C), so that a load that comes and goes on the shared
machine hits them alike; the figures are the median of the rounds, and the ratio builtin/raw and
builtin/pymodbus are taken from them. Nothing is asserted. Prints a human line per run, a summary line and
one JSON line.

Measured on the 2-core development machine shared with other work (load average 5-9, so the absolute
figures move by +-25 % from run to run; the ratios less): at 200 meters, medians of 2-3 rounds, requests per
client CPU-second: builtin 20.9-26.6k, pymodbus 6.6-9.2k, raw 26.6-35.8k; builtin/raw 0.68-0.92,
builtin/pymodbus 2.9-3.7. The whole polling path with decode: poll-builtin 8.3-13.6k, poll-pymodbus
4.1-5.3k (2.0-2.5x), poll-builtin/raw 0.31-0.38.

    .venv/bin/python bench/modbus_client.py [--meters 200] [--window 4] [--warmup 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/modbus_client.py`
    sys.path.insert(0, str(ROOT))

KINDS = ("builtin", "pymodbus", "raw", "poll-builtin", "poll-pymodbus")
HEADER = struct.Struct(">HHHB")
REQUEST = struct.Struct(">HHHBBHH")


# ------------------------------------------------------------------------------------------------ servers


class _Meter(asyncio.Protocol):
    """Answers every read at once with registers 0x4365 0x0000 ... (float32 229.0)."""

    answers: ClassVar[dict[tuple[int, int], bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.rx = b""

    def data_received(self, data: bytes) -> None:
        buf = self.rx + data
        at, out = 0, []
        while len(buf) - at >= 12:
            tid, _pid, _length, unit, function, _address, count = REQUEST.unpack_from(buf, at)
            at += 12
            pdu = self.answers.get((function, count))
            if pdu is None:
                pdu = bytes([function, 2 * count]) + struct.pack(">HH", 0x4365, 0) * (count // 2)
                pdu += b"\x00\x00" * (count % 2)
                self.answers[(function, count)] = pdu
            out.append(HEADER.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        self.rx = buf[at:]
        self.transport.write(b"".join(out))


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Meter, "127.0.0.1", p, reuse_address=True) for p in ports]
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the orchestrator closes our stdin
    for s in servers:
        s.close()


# ------------------------------------------------------------------------------------------------ clients


def sdm630_reads() -> list[tuple[int, int]]:
    """(address, count) of the SDM630's planned FC04 reads, as the gateway plans them."""
    from drivers.modbus.planner import plan_reads
    from gateway.config.profile import builtin_profiles

    reads = plan_reads([p for p in builtin_profiles()["sdm630"].points if not p.info], 1)
    assert all(r.function == "input" for r in reads)
    return [(r.address, r.count) for r in reads]


async def run_client(kind: str, ports: list[int], warmup: float, window: float) -> dict[str, float]:
    from drivers.modbus.line import Connection
    from drivers.modbus.planner import ReadRequest
    from drivers.modbus.spec import LineSpec
    from drivers.modbus.tcp import TcpConnection
    from gateway.core.stats import LineStats

    plan = sdm630_reads()
    requests = [ReadRequest(1, "input", a, n, ()) for a, n in plan]
    counting = False
    done = failed = 0
    stop = asyncio.Event()

    async def gateway_meter(port: int) -> None:
        nonlocal done, failed
        line = LineSpec(id=f"m{port}", transport="tcp", host="127.0.0.1", port=port, timeout=5.0,
                        client="builtin" if kind == "builtin" else "pymodbus")  # fmt: skip
        stats = LineStats(line=line.id, transport="tcp")
        make = TcpConnection if kind == "builtin" else Connection
        conn = make(line, stats, line.id, lambda c, up: None)
        try:
            while not stop.is_set():
                for r in requests:
                    outcome = await conn.read(r)
                    if counting:
                        done += 1
                        failed += outcome.failure is not None
        finally:
            conn.close()

    async def raw_meter(port: int) -> None:
        nonlocal done, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        tid = 0
        try:
            while not stop.is_set():
                for address, count in plan:
                    tid = tid % 0xFFFF + 1
                    writer.write(REQUEST.pack(tid, 0, 6, 1, 4, address, count))
                    got, _pid, length, _unit = HEADER.unpack(await reader.readexactly(7))
                    payload = await reader.readexactly(length - 1)
                    if counting:
                        done += 1
                        failed += got != tid or payload[1] != 2 * count
        finally:
            writer.close()

    if kind.startswith("poll-"):
        return await run_poll(kind.removeprefix("poll-"), ports, warmup, window)
    meter = raw_meter if kind == "raw" else gateway_meter
    tasks = [asyncio.create_task(meter(p)) for p in ports]
    await asyncio.sleep(warmup)
    counting = True
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    counting = False
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return figures(done, failed, cpu, wall)


async def run_poll(client: str, ports: list[int], warmup: float, window: float) -> dict[str, float]:
    from drivers.modbus.line import LineActor
    from drivers.modbus.planner import plan_reads
    from drivers.modbus.spec import Client, DeviceSpec, LineSpec
    from gateway.config.profile import builtin_profiles
    from gateway.core.types import Event

    assert client in ("builtin", "pymodbus")
    which: Client = "builtin" if client == "builtin" else "pymodbus"
    sdm630 = builtin_profiles()["sdm630"]
    samples = 0

    async def emit(event: Event) -> None:
        nonlocal samples
        samples += 1

    actors = []
    for k, port in enumerate(ports):
        line = LineSpec(id=f"m{k}", transport="tcp", host="127.0.0.1", port=port, timeout=5.0, client=which)
        device = DeviceSpec(id=f"meter{k}", unit=1, poll_interval=0.01, requests=tuple(plan_reads(
            [p for p in sdm630.points if not p.info], 1)))  # fmt: skip
        actors.append(LineActor(line, [device], emit, seed=k, phase=k / len(ports)))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(a.run(stop)) for a in actors]

    def counts() -> tuple[int, int]:
        stats = [s for a in actors for s in a.device_stats.values()]
        return sum(s.requests for s in stats), sum(sum(s.errors.values()) for s in stats)

    await asyncio.sleep(warmup)
    (req0, err0), cpu0, wall0 = counts(), time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    req1, err1 = counts()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return figures(req1 - req0, err1 - err0, cpu, wall)


def figures(done: int, failed: int, cpu: float, wall: float) -> dict[str, float]:
    return {
        "requests": done,
        "failed": failed,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_percent": round(100 * cpu / wall, 1),
        "requests_per_cpu_s": round(done / cpu) if cpu else 0,
        "requests_per_s": round(done / wall),
    }


# ------------------------------------------------------------------------------------------- orchestration


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def child(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--server-procs", type=int, default=2)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        asyncio.run(serve([int(p) for p in args.serve.split(",")]))
        return
    if args.client:
        kind, ports = args.client.split(":", 1)
        result = asyncio.run(run_client(kind, [int(p) for p in ports.split(",")], args.warmup, args.window))
        print("RESULT " + json.dumps(result), flush=True)
        return

    ports = free_ports(args.meters)
    shares = [ports[i :: args.server_procs] for i in range(args.server_procs)]
    servers = [child(["--serve", ",".join(map(str, s))]) for s in shares]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    try:
        for s in servers:
            assert s.stdout is not None and s.stdout.readline().strip() == "READY"
        load = os.getloadavg()[0]
        for rnd in range(args.rounds):
            for kind in KINDS:
                proc = child(["--client", f"{kind}:{','.join(map(str, ports))}",
                              "--warmup", str(args.warmup), "--window", str(args.window)])  # fmt: skip
                out, _ = proc.communicate()
                line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
                result = json.loads(line.removeprefix("RESULT "))
                runs[kind].append(result)
                print(
                    f"round {rnd + 1} {kind:8s}: {result['requests_per_cpu_s']:>7,} requests per CPU-s"
                    f" ({result['requests']:,} requests, {result['failed']} failed, client CPU"
                    f" {result['cpu_percent']:.0f}%, {result['requests_per_s']:,} requests/s)",
                    flush=True,
                )
    finally:
        for s in servers:
            if s.stdin is not None:
                s.stdin.close()
        for s in servers:
            s.wait(timeout=10)
    median = {k: statistics.median(r["requests_per_cpu_s"] for r in runs[k]) for k in KINDS}

    def ratio(a: str, b: str) -> float:
        return round(median[a] / median[b], 3) if median[b] else 0.0

    ratios = {
        "builtin_over_raw": ratio("builtin", "raw"),
        "builtin_over_pymodbus": ratio("builtin", "pymodbus"),
        "poll_builtin_over_raw": ratio("poll-builtin", "raw"),
        "poll_builtin_over_poll_pymodbus": ratio("poll-builtin", "poll-pymodbus"),
    }
    print(
        f"{args.meters} meters, SDM630 reads closed loop, median of {args.rounds} rounds, requests per CPU-s:"
        + "".join(f" {k} {median[k]:,.0f}," for k in KINDS)
        + f" client: builtin/raw {ratios['builtin_over_raw']:.2f}, builtin/pymodbus"
        f" {ratios['builtin_over_pymodbus']:.2f}; polling with decode: builtin/raw"
        f" {ratios['poll_builtin_over_raw']:.2f},"
        f" builtin/pymodbus {ratios['poll_builtin_over_poll_pymodbus']:.2f}"
        f" (load average {load:.1f} at start, {os.cpu_count()} CPUs)"
    )
    print(
        json.dumps(
            {
                "bench": "modbus_client",
                "meters": args.meters,
                "window_s": args.window,
                "rounds": args.rounds,
                "server_procs": args.server_procs,
                "load_average": round(load, 2),
                "requests_per_cpu_s": median,
                **ratios,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
