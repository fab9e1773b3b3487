"""Issue #3 acceptance: a spool at its byte bound drops the OLDEST points, and the drop counter the metrics
service exposes (/metrics, meterwatch_spool_dropped_points_total{reason="bytes"}) says how many.

The daemon (build_runtime + serve) polls the simulated site while VictoriaMetrics is down, with a spool of
24 kB, so it overflows within seconds. When VictoriaMetrics is back, what arrives is the polled sequence
(the SampleTap's, in the sink's order) minus exactly its first N samples, N read from /metrics.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.app.daemon import build_runtime, serve
from gateway.config import load_site
from gateway.core.types import Sample
from gateway.sink.lineproto import LineEncoder, series_name
from gateway.sink.tap import SampleTap, read_tap
from simulators.runner import SimulatorThread
from tests.fixtures.sim import write_sim_site
from tests.fixtures.victoria import PointKey, Victoria, differences, expected_points, stored_ms
from tests.helpers import eventually

SELECTOR = '{site="simtest"}'
MAX_BYTES = 24_000


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value of every sample on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


DROPPED = 'meterwatch_spool_dropped_points_total{reason="bytes"}'


def value_keys(s: Sample, enc: LineEncoder) -> set[PointKey]:
    """The sample's points without `quality`: two reads of a device can share a millisecond and so a
    quality point, never a quantity."""
    measurement = enc.keys[s.device].measurement
    return {(series_name(measurement, q), s.device, stored_ms(s.ts)) for q in s.values}


async def test_spool_at_its_byte_bound_drops_oldest_first_and_counts_them(
    tmp_path: Path, victoria: Victoria
) -> None:
    victoria.stop()
    site_path = write_sim_site(tmp_path)
    site_path.write_text(
        site_path.read_text(encoding="utf-8")
        + f'influx: {{url: "{victoria.url}", bucket: mw, batch_size: 500, flush_interval: 200ms}}\n'
        + f"spool: {{mode: durable, max_bytes: {MAX_BYTES}}}\n"
        + "http: {host: 127.0.0.1, port: 0}\n",
        encoding="utf-8",
    )
    site = load_site(site_path)
    enc = LineEncoder(site)
    sim = SimulatorThread(site, mqtt=False, noise=0.01, seed=3).start()
    rt = build_runtime(site, tmp_path / "state")
    tap = tmp_path / "tap.jsonl"
    rt.components.insert(0, SampleTap(rt.bus, tap))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(rt, stop))
    try:
        fw = rt.services.sink
        assert fw is not None
        port = await eventually(lambda: rt.services.http_port, 30, "the HTTP server")
        await eventually(lambda: fw.buffer.stats.dropped["bytes"] > 20, 60, "the spool to overflow")
        metrics = await asyncio.to_thread(scrape, port)
        assert metrics[DROPPED] >= 20
        # at the bound, give or take the batch being written (gateway/sink/spool.py, "In flight")
        assert metrics['meterwatch_spool_bytes{mode="durable"}'] > MAX_BYTES / 2
        assert metrics["meterwatch_spool_max_bytes{}"] == MAX_BYTES

        await asyncio.to_thread(victoria.start)
        # once the sink writes again the spool drains and stops dropping; then the counter is final
        await eventually(lambda: fw.stats.points_written > 0, 90, "the sink to write again")
        await eventually(lambda: fw.buffer.stats.points < 100, 60, "the spool to drain")
        metrics = await asyncio.to_thread(scrape, port)
        dropped = int(metrics[DROPPED])
        assert (
            dropped == fw.buffer.stats.dropped["bytes"]
            and metrics['meterwatch_spool_dropped_points_total{reason="age"}'] == 0
        )
        polled = read_tap(tap)
        assert dropped < len(polled)
        kept = polled[dropped:]
        await eventually(
            lambda: all(k in victoria.stored(SELECTOR)[0] for k in expected_points(kept, enc)),
            60,
            "every sample after the dropped ones",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        sim.stop()

    got, _ = victoria.stored(SELECTOR)
    assert differences(got, expected_points(kept, enc)) == []
    # exactly the first `dropped` polled samples are missing: the oldest, as many as the counter says
    lost = [i for i, s in enumerate(polled) if not value_keys(s, enc) & got.keys()]
    assert lost == list(range(dropped))
