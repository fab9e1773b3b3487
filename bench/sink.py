"""Sink figures against a real VictoriaMetrics (Debian's package) started by the bench on a free port.

Site size chosen: 200 devices x 10 quantities polled every second, i.e. 200 samples (points) and 2,000 values
per second: a large residential compound (20 buildings, a main meter, unit meters and water sensors each).

0. Per point against raw influxdb-client (issue 11, item 4): the same VictoriaMetrics, in the same run. The
   raw peer writes prebuilt line protocol (encoded before its clock starts, joined per batch of BATCH
   lines) through influxdb-client's synchronous write API; the sink takes pre-built Samples from the bus
   to HTTP 204 (encoding, spool commit with synchronous=FULL, read back, write, delete). Both are counted
   in CPU-seconds of this process (all its threads: the sink's work, the spool and HTTP threads, and the
   publisher putting Samples on the bus), so the figure does not depend on how busy the machine's other
   cores are. The raw peer runs before and after the sink and the mean is the baseline; the ratio is
   (sink points per CPU-second) / (raw points per CPU-second).
   Beside it, on the same samples, the two costs no spool or HTTP change removes: encoding alone (a batch
   at a time, as the intake does: LineEncoder.encode_body) and the bus alone (publish, one blocking
   subscriber's get), and the ratio those two alone would allow.

   Measured (2 shared cores, other helpers' work running: alternate runs of the tree before and after in the
   same minutes, load 2.4-4.9):
   - per-sample str.format templates, per-sample repr of floats (before): sink 17.6-19.3 us per point, raw
     1.2-1.3 us, ratio 0.068-0.075; encoding 9.1-10.6 us, bus 1.7-2.2 us (ceiling 0.096-0.117).
   - batch encoding with orjson (encode_many): sink 9.7-11.9 us per point, raw 1.1-1.4 us, ratio
     0.108-0.118; encoding 2.6-2.9 us, bus 1.4-1.6 us. By thread: event loop 5-7 us, spool thread 2.4-3.4 us
     (two commits per batch), HTTP thread (influxdb-client) 1.1-1.5 us.
   - 2026-11-30, issue 11 item 4 (alternate runs with the tree before, load 1.2-2.7): requests by
     http.client on one kept-alive connection, Subscription.get_many and a publish with no coroutine when
     the queue has room, the encoder's body stored as it is (encode_body, append_body), the spool's
     secure_delete off (Debian's SQLite zeroed every deleted page), one commit per batch (deletes deferred
     to the next transaction), 16 KiB pages, the ack and the next peek in one trip to the spool thread,
     several batches a transaction while a backlog is queued: sink 7.0-7.4 us per point, raw 1.12-1.42 us,
     ratio 0.152-0.193 (before: 11.5-13.5 us, ratio 0.083-0.104). By thread (a harness timing the durable
     phase alone): event loop 4.9-5.8 us (encoding 3.3-4.1 of it in the run, 2.3-2.5 alone; the publisher
     and the intake the rest), spool thread 1.2-1.3 us, HTTP thread 0.6-0.7 us.
     Still short of 0.25 (4.5-5.1 us against this raw peer): encoding is ~1.2 us of Python per sample
     (template lookup, float() of the values, quality, stamp) and ~1 us of C (orjson, split, join); every
     trip of a batch to the spool or HTTP thread and back costs ~0.3 ms of CPU on this VM (thread wake-ups;
     2.25 trips a batch, ~0.7 us a point); SQLite writes each body twice (WAL, checkpoint) with an fsync
     (~0.8 us); the HTTP send is mostly the kernel's (~0.5 us). Reaching 0.25 would take encoding in C (or
     sources handing over encoded lines), a sender thread that peeks, writes and acks with no event-loop
     trips, and bodies written once (segment files beside a small SQLite index).
   - 2026-11-30, later (alternate runs of the tree before and after in the same minutes, load 1.1-2.9; both
     with the C encoder, gateway/sink/_lineenc): the sender is a thread of its own that peeks, writes and
     acks with no trip through the event loop per batch (forwarder.py, "Threads"); the memory buffer's
     appends run on the loop. Sink 4.1-5.4 us per point, ratio 0.263-0.337 in 9 runs (before: 4.0-6.1 us,
     ratio 0.225-0.284 in 8). The run-to-run spread is larger than the gain; a harness timing the durable
     phase alone by thread says it plainly (4 alternate pairs): process 5.05-6.08 -> 4.34-5.60 us a point,
     event loop 3.3-4.0 -> 2.85-3.75, spool thread 1.1-1.3 -> 0.8-1.0, the HTTP thread 0.55-0.7 -> the
     sender thread 0.7-0.85 (it now peeks and acks too). Best-effort phase (harness): 5.6-6.5 -> 5.2-5.75 us.
     Tried and dropped: a rollback journal (PERSIST, TRUNCATE) instead of WAL, which would write a body
     once: the spool's CPU went up, 0.46-0.69 -> 0.77-0.93 us a point (append, peek, ack, synchronous=FULL);
     a WAL of 64 MiB between checkpoints instead of 4: no change.
     Full runs, after vs before (4 and 3 runs, alternate, load 1.1-2.5): durable 48,000-77,600 vs
     49,100-74,200 samples/s; replay without limit 79,300-95,400 vs 70,600-119,800; spool fill (no
     forwarder: unchanged code) 107,700-157,600 vs 160,800-212,900, which is the noise. Best-effort
     50,300-61,800 vs 58,600-72,000 samples/s, lower in every pair, and not explained: the harness above,
     timing that phase alone (3 alternations), finds it 4.8-6.0 vs 5.8-6.6 us a point and 62,900-83,300 vs
     65,800-68,700 samples/s. Suspect the phase's place in the run (after the durable one) or the GIL
     (three Python threads: loop, spool, sender; the memory peeks are Python) before trusting either.
   Throughput (full run, load 4.9 vs 2.4 before): durable 38,497 -> 52,508 samples/s, best-effort 39,063
   -> 64,953, spool fill 69,226 -> 145,590, replay without limit 43,729 -> 81,994 samples/s. 2026-11-30
   (load 2.1): durable 51,599 samples/s at 38 % CPU (the publisher is the limit), best-effort 67,179, spool
   fill 154,612, replay without limit 88,397 samples/s; every one of 1,445,000 samples stored.

1. Throughput: samples published on the bus as fast as the path takes them, through the sink into
   VictoriaMetrics, timed until VictoriaMetrics accepted the last one; once spool-first (durable: SQLite,
   WAL, synchronous=FULL, one commit per batch) and once best-effort (memory buffer). CPU % of this process
   (all threads; VictoriaMetrics' own CPU not included) and its peak RSS during the phase.
2. Replay after a 10-minute outage: 200 x 600 = 120,000 samples in the spool, then the sink started with
   the shipped default replay_rate (5,000 points/s) while the site keeps producing 200 samples/s; timed
   until the backlog is gone. And the same backlog replayed with no rate limit and no live traffic, which
   is the path's capacity.

RSS is this process's resident size, peak during the phase. The phases share one process, so a later
phase also carries heap Python kept from an earlier one (the best-effort phase's memory buffer, which fills
because publishing outruns writing). Finally every sample sent is counted in VictoriaMetrics.

Prints one human line per figure and one JSON line with all of them. Runtime about a minute on 2 cores
(--quick: the per-point comparison only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures.victoria

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from gateway.config import Site, load_site
from gateway.config.store import InfluxConfig, SpoolConfig
from gateway.core.bus import Bus
from gateway.core.types import Sample
from gateway.sink.deadletter import DeadLetters
from gateway.sink.forwarder import Forwarder
from gateway.sink.influx import InfluxWriter
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Buffer, MemoryBuffer, Spool
from tests.fixtures.victoria import Victoria

BUILDINGS = 20
DEVICES_PER_BUILDING = 10
QUANTITIES = [f"q{i}" for i in range(10)]
SITE_RATE = BUILDINGS * DEVICES_PER_BUILDING  # samples per second at a 1 s poll interval
OUTAGE_S = 600
THROUGHPUT_SAMPLES = 200_000
RAW_POINTS = 400_000
FLOOR_SAMPLES = 100_000
BATCH = 1000  # the shipped influx.batch_size default
DEFAULT_REPLAY = SpoolConfig().replay_rate


def write_site(directory: Path) -> Site:
    buildings, lines, devices = [], [], []
    for b in range(BUILDINGS):
        bid = f"B{b:02d}"
        buildings.append(f"  - {{id: {bid}, domains: [{{id: {bid}-power, kind: power}}]}}")
        lines.append(f"  - {{id: l{b:02d}, transport: tcp, host: 127.0.0.1, port: 1502}}")
        for u in range(DEVICES_PER_BUILDING):
            devices.append(
                f"  - {{id: {bid}-m{u}, building: {bid}, domain: {bid}-power, line: l{b:02d}, unit: {u + 1},"
                " profile: dtsu666}"
            )
    text = (
        "site: {id: bench}\nbuildings:\n"
        + "\n".join(buildings)
        + "\nlines:\n"
        + "\n".join(lines)
        + "\ndevices:\n"
        + "\n".join(devices)
        + "\n"
    )
    path = directory / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


class SampleSource:
    """Samples of the whole site, second after second from `t0`: every device once per second."""

    def __init__(self, site: Site, t0: float, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.devices = [d.id for d in site.config.devices]
        # a pool of realistic readings (5 significant digits, like a meter's float32), reused with new stamps
        self.pool = [{q: round(rng.uniform(0, 500), 3) for q in QUANTITIES} for _ in range(997)]
        self.t0 = t0
        self.n = 0

    def take(self, count: int) -> Iterator[Sample]:
        for _ in range(count):
            i = self.n
            self.n += 1
            second, k = divmod(i, len(self.devices))
            ts = self.t0 + second + k * 0.0037  # the devices of one cycle answer a few ms apart
            yield Sample(self.devices[k], ts, self.pool[i % len(self.pool)])


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Meter:
    """CPU % of this process and its peak RSS between start() and stop()."""

    def __init__(self) -> None:
        self.peak = 0
        self._run = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = rss_bytes()
        self._run = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = ru.ru_utime + ru.ru_stime
        self.t0 = time.perf_counter()

    def _sample(self) -> None:
        while self._run:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.05)

    def stop(self) -> tuple[float, float, int]:
        """(seconds, CPU % of one core, peak RSS bytes)"""
        wall = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime + ru.ru_stime - self.cpu0
        self.cpu_seconds = cpu
        self._run = False
        assert self._thread is not None
        self._thread.join()
        return wall, 100.0 * cpu / wall, self.peak


async def _until(done: Callable[[], bool], sink: asyncio.Task[None], every: float) -> None:
    """Poll `done` every `every` seconds; raise if the sink's task ends first."""
    while not done():
        if sink.done():
            raise RuntimeError(f"the sink stopped: {sink.exception()}")
        await asyncio.sleep(every)


@dataclass
class Bench:
    site: Site
    vm: Victoria
    work: Path

    def forwarder(self, bus: Bus, buffer: Buffer, replay_rate: float) -> Forwarder:
        cfg = InfluxConfig(url=self.vm.url, bucket="bench", batch_size=BATCH, flush_interval=0.2)
        return Forwarder(
            sub=bus.subscribe("sink", maxsize=20_000, overflow="block"),
            encoder=LineEncoder(self.site),
            buffer=buffer,
            writer=InfluxWriter(cfg),
            dead=DeadLetters(self.work / "deadletter.jsonl"),
            batch_size=BATCH,
            flush_interval=0.2,
            replay_rate=replay_rate,
        )

    async def throughput(self, buffer: Buffer, source: SampleSource) -> dict[str, float]:
        bus = Bus()
        fw = self.forwarder(bus, buffer, replay_rate=1e9)
        samples = list(source.take(THROUGHPUT_SAMPLES))  # made before the clock starts: the source's cost
        stop = asyncio.Event()
        task = asyncio.create_task(fw.run(stop))
        meter = Meter()
        meter.start()
        for s in samples:
            await bus.publish(s)
        await _until(lambda: fw.stats.points_written >= THROUGHPUT_SAMPLES, task, 0.005)
        wall, cpu, peak = meter.stop()
        stop.set()
        await task
        if fw.stats.write_errors:
            raise RuntimeError(f"write errors during the bench: {dict(fw.stats.write_errors)}")
        return {
            "samples": THROUGHPUT_SAMPLES,
            "seconds": round(wall, 2),
            "samples_per_s": round(THROUGHPUT_SAMPLES / wall),
            "values_per_s": round(THROUGHPUT_SAMPLES * len(QUANTITIES) / wall),
            "cpu_percent": round(cpu, 1),
            "cpu_seconds": round(meter.cpu_seconds, 3),
            "points_per_cpu_s": round(THROUGHPUT_SAMPLES / meter.cpu_seconds),
            "peak_rss_mb": round(peak / 2**20, 1),
        }

    def raw(self, source: SampleSource) -> dict[str, float]:
        """The peer: influxdb-client's synchronous write API sending prebuilt line protocol, BATCH lines per
        request, to the same VictoriaMetrics."""
        enc = LineEncoder(self.site)
        lines = enc.encode_many(list(source.take(RAW_POINTS)))
        batches = [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]
        client = InfluxDBClient(url=self.vm.url, token="", org="bench", timeout=30_000, retries=False)
        api = client.write_api(write_options=SYNCHRONOUS)
        meter = Meter()
        meter.start()
        for batch in batches:
            api.write(bucket="bench", org="bench", record="\n".join(batch), write_precision=WritePrecision.US)  # type: ignore[arg-type]
        wall, cpu, _ = meter.stop()
        client.close()
        return {
            "points": len(lines),
            "seconds": round(wall, 2),
            "points_per_s": round(len(lines) / wall),
            "cpu_percent": round(cpu, 1),
            "cpu_seconds": round(meter.cpu_seconds, 3),
            "points_per_cpu_s": round(len(lines) / meter.cpu_seconds),
        }

    async def floors(self, source: SampleSource) -> dict[str, float]:
        """What the sink cannot go below per point, on the same samples: encoding them (the repr of every
        float value dominates) and passing them through the bus (publish, one blocking subscriber's get).
        Neither is in the raw peer's figure: it writes prebuilt lines."""
        samples = list(source.take(FLOOR_SAMPLES))
        enc = LineEncoder(self.site)
        c0 = _cpu()
        for i in range(0, len(samples), BATCH):  # as the sink's intake does: a batch at a time
            enc.encode_body(samples[i : i + BATCH])
        encode = _cpu() - c0
        bus = Bus()
        sub = bus.subscribe("sink", maxsize=20_000, overflow="block")

        async def drain() -> None:
            for _ in range(len(samples)):
                await sub.get()

        c0 = _cpu()
        consumer = asyncio.create_task(drain())
        for s in samples:
            await bus.publish(s)
        await consumer
        through_bus = _cpu() - c0
        return {
            "samples": len(samples),
            "encode_us_per_point": round(1e6 * encode / len(samples), 2),
            "bus_us_per_sample": round(1e6 * through_bus / len(samples), 2),
        }

    def fill_spool(self, path: Path, source: SampleSource) -> dict[str, float]:
        """A 10-minute outage's worth of samples, appended in the sink's batch size (as the intake does)."""
        enc = LineEncoder(self.site)
        spool = Spool(path, max_bytes=SpoolConfig().max_bytes, max_age=SpoolConfig().max_age)
        total = SITE_RATE * OUTAGE_S
        t0 = time.perf_counter()
        for _ in range(total // BATCH):
            spool.append(enc.encode_many(list(source.take(BATCH))))
        wall = time.perf_counter() - t0
        size = spool.stats.bytes
        spool.close()
        return {
            "points": total,
            "seconds": round(wall, 2),
            "append_per_s": round(total / wall),
            "bytes": size,
        }

    async def replay(
        self, path: Path, source: SampleSource, replay_rate: float, live: bool
    ) -> dict[str, float]:
        spool = Spool(path, max_bytes=SpoolConfig().max_bytes, max_age=SpoolConfig().max_age)
        backlog = spool.stats.points
        bus = Bus()
        fw = self.forwarder(bus, spool, replay_rate=replay_rate)
        stop = asyncio.Event()
        task = asyncio.create_task(fw.run(stop))
        feeding = asyncio.Event()
        start_n = source.n
        feeder = asyncio.create_task(self._live(bus, source, feeding)) if live else None
        meter = Meter()
        meter.start()
        # drained: the backlog is written (it is sent first: the spool is FIFO) and what waits is at most
        # two seconds of live samples
        await _until(
            lambda: fw.stats.points_written >= backlog and spool.stats.points <= 2 * SITE_RATE, task, 0.01
        )
        wall, cpu, peak = meter.stop()
        feeding.set()
        if feeder is not None:
            await feeder
        stop.set()
        await task
        # live samples still spooled at the stop stay in the spool file: not written, not counted
        return {
            "backlog": backlog,
            "replay_rate_limit": replay_rate,
            "live_samples_per_s": SITE_RATE if live else 0,
            "live_samples_written": source.n - start_n - spool.stats.points,
            "seconds": round(wall, 2),
            "backlog_per_s": round(backlog / wall),
            "cpu_percent": round(cpu, 1),
            "peak_rss_mb": round(peak / 2**20, 1),
        }

    async def _live(self, bus: Bus, source: SampleSource, stop: asyncio.Event) -> None:
        """The site keeps polling during the replay: one second's samples every second."""
        next_at = time.monotonic()
        while not stop.is_set():
            for s in source.take(SITE_RATE):
                await bus.publish(s)
            next_at += 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - time.monotonic()))


def compare(
    raw_before: dict[str, float],
    sink: dict[str, float],
    raw_after: dict[str, float],
    floors: dict[str, float],
) -> dict[str, float]:
    raw = (raw_before["points_per_cpu_s"] + raw_after["points_per_cpu_s"]) / 2
    floor_us = floors["encode_us_per_point"] + floors["bus_us_per_sample"]
    return {
        "raw_points_per_cpu_s": round(raw),
        "sink_points_per_cpu_s": sink["points_per_cpu_s"],
        "ratio": round(sink["points_per_cpu_s"] / raw, 3),
        "sink_us_per_point": round(1e6 / sink["points_per_cpu_s"], 2),
        "raw_us_per_point": round(1e6 / raw, 2),
        # encoding and the bus alone, with no spool and no HTTP at all, would reach this ratio
        "ratio_ceiling_encode_and_bus": round(1e6 / floor_us / raw, 3),
    }


async def run(bench: Bench, quick: bool) -> dict[str, object]:
    now = time.time()
    results: dict[str, object] = {}
    # distinct time ranges per phase, so no phase overwrites another's points
    results["raw_before"] = bench.raw(SampleSource(bench.site, now - 96000))
    results["durable"] = await bench.throughput(
        Spool(bench.work / "through.sqlite", 512 * 2**20, 7 * 86400.0), SampleSource(bench.site, now - 86400)
    )
    results["raw_after"] = bench.raw(SampleSource(bench.site, now - 92000))
    results["floors"] = await bench.floors(SampleSource(bench.site, now - 90000))
    results["per_point"] = compare(
        results["raw_before"],  # type: ignore[arg-type]
        results["durable"],  # type: ignore[arg-type]
        results["raw_after"],  # type: ignore[arg-type]
        results["floors"],  # type: ignore[arg-type]
    )
    sent = 2 * RAW_POINTS + THROUGHPUT_SAMPLES
    if quick:
        return await _check(bench, results, sent)
    results["best_effort"] = await bench.throughput(
        MemoryBuffer(512 * 2**20, 7 * 86400.0), SampleSource(bench.site, now - 80000)
    )
    path = bench.work / "outage.sqlite"
    results["spool_fill"] = bench.fill_spool(path, SampleSource(bench.site, now - 70000))
    results["replay_default"] = await bench.replay(
        path, SampleSource(bench.site, now - 60000), DEFAULT_REPLAY, live=True
    )
    path2 = bench.work / "outage2.sqlite"
    bench.fill_spool(path2, SampleSource(bench.site, now - 50000))
    live = SampleSource(bench.site, now - 40000)
    results["replay_unlimited"] = await bench.replay(path2, live, 1e9, live=False)
    sent += THROUGHPUT_SAMPLES + 2 * SITE_RATE * OUTAGE_S
    sent += results["replay_default"]["live_samples_written"]  # type: ignore[index]
    return await _check(bench, results, sent)


async def _check(bench: Bench, results: dict[str, object], sent: int) -> dict[str, object]:
    """Every sample of every phase is a point of power_q0: count them in VictoriaMetrics."""
    stored = await asyncio.to_thread(bench.vm.count, '{__name__="power_q0",site="bench"}')
    results["check"] = {"samples_sent": sent, "points_stored": stored}
    if stored < sent:
        raise RuntimeError(f"VictoriaMetrics holds {stored} of {sent} samples")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--quick", action="store_true", help="only the per-point comparison with raw influxdb-client"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meterwatch-bench-sink-"))
    vm = Victoria(work / "victoria-data")
    load = os.getloadavg()[0]
    try:
        vm.start()
        site = write_site(work)
        r = asyncio.run(run(Bench(site, vm, work), args.quick))
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
    r["load_avg_1m_at_start"] = round(load, 2)
    pp, d, rb, ra = r["per_point"], r["durable"], r["raw_before"], r["raw_after"]
    assert isinstance(pp, dict) and isinstance(d, dict) and isinstance(rb, dict) and isinstance(ra, dict)
    print(
        f"site: {SITE_RATE} devices x {len(QUANTITIES)} quantities at 1 s = {SITE_RATE} samples/s; "
        f"batch {BATCH}; VictoriaMetrics on localhost; {os.cpu_count()} cores, load {load:.2f} at start"
    )
    print(
        f"per point: spool-first sink {pp['sink_points_per_cpu_s']:,} points/CPU-s vs raw influxdb-client "
        f"{pp['raw_points_per_cpu_s']:,} points/CPU-s (before {rb['points_per_cpu_s']:,}, after "
        f"{ra['points_per_cpu_s']:,}): ratio {pp['ratio']:.3f} (goal >= 0.25)"
    )
    fl = r["floors"]
    assert isinstance(fl, dict)
    print(
        f"per point: sink {pp['sink_us_per_point']} us of CPU, raw {pp['raw_us_per_point']} us; of the "
        f"sink's, encoding {fl['encode_us_per_point']} us and the bus {fl['bus_us_per_sample']} us: "
        f"those alone would make the ratio {pp['ratio_ceiling_encode_and_bus']:.3f}"
    )
    if args.quick:
        print(json.dumps({"bench": "sink", "quick": True, **r}))
        return
    b, f = r["best_effort"], r["spool_fill"]
    rd, ru = r["replay_default"], r["replay_unlimited"]
    assert isinstance(b, dict) and isinstance(f, dict)
    assert isinstance(rd, dict) and isinstance(ru, dict)
    for name, x in (("spool-first (durable)", d), ("best-effort (memory) ", b)):
        print(
            f"{name}: {x['samples_per_s']:>7,} samples/s ({x['values_per_s']:,} values/s) stored, "
            f"CPU {x['cpu_percent']}%, peak RSS {x['peak_rss_mb']} MB"
        )
    print(
        f"10-minute outage: {f['points']:,} samples spooled ({f['bytes'] / 2**20:.1f} MB) at "
        f"{f['append_per_s']:,} samples/s"
    )
    print(
        f"replay at the default limit ({DEFAULT_REPLAY:.0f}/s) with the site live: backlog gone in "
        f"{rd['seconds']} s ({rd['backlog_per_s']:,} samples/s), CPU {rd['cpu_percent']}%, "
        f"peak RSS {rd['peak_rss_mb']} MB"
    )
    print(
        f"replay without limit, site idle: {ru['seconds']} s ({ru['backlog_per_s']:,} samples/s), "
        f"CPU {ru['cpu_percent']}%, peak RSS {ru['peak_rss_mb']} MB"
    )
    print(
        json.dumps(
            {
                "bench": "sink",
                "quick": False,
                "site_samples_per_s": SITE_RATE,
                "quantities": len(QUANTITIES),
                **r,
            }
        )
    )


if __name__ == "__main__":
    main()
