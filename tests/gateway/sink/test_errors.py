"""How the sink answers InfluxDB's errors. VictoriaMetrics cannot be made to answer 429/413/400/401 on
demand, so these tests run the real writer against a small local HTTP server that answers as scripted."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.app.daemon import Runtime, build_runtime
from gateway.config import load_site
from gateway.core.types import Sample
from gateway.sink.forwarder import Forwarder
from gateway.sink.influx import parse_retry_after
from tests.helpers import eventually

Answer = tuple[int, dict[str, str], str]


@dataclass
class FakeInflux:
    script: Callable[[int, list[str]], Answer]
    requests: list[tuple[float, int, list[str]]] = field(default_factory=list)  # (time, status, lines)
    accepted: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake_influx() -> Iterator[FakeInflux]:
    fake = FakeInflux(script=lambda n, lines: (204, {}, ""))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            lines = [ln for ln in body.split("\n") if ln]
            with lock:
                status, headers, text = fake.script(len(fake.requests), lines)
                fake.requests.append((time.monotonic(), status, lines))
                if status == 204:
                    fake.accepted.extend(lines)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            payload = text.encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


SITE = """\
site: {{id: t1}}
buildings: [{{id: B1}}]
lines: [{{id: l1, transport: tcp, host: 127.0.0.1, port: 1502}}]
devices:
  - {{id: M1, building: B1, line: l1, unit: 1, profile: sdm630}}
influx: {{url: "{url}", batch_size: {batch}, flush_interval: 50ms}}
spool: {{replay_rate: 100000}}
"""


@dataclass
class Running:
    rt: Runtime
    fw: Forwarder
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def run_sink(tmp_path: Path, url: str, batch: int = 100) -> Running:
    p = tmp_path / "site.yaml"
    p.write_text(SITE.format(url=url, batch=batch))
    rt = build_runtime(load_site(p), tmp_path / "state")
    stop = asyncio.Event()
    fw = rt.services.sink
    assert fw is not None
    tasks = [asyncio.create_task(fw.run(stop))]
    return Running(rt, fw, stop, tasks)


async def publish(rt: Runtime, n: int, device: str = "M1", start: int = 0) -> None:
    for i in range(start, start + n):
        await rt.bus.publish(Sample(device, 1_700_000_000.0 + i, {"voltage_l1": float(i)}))


async def test_429_backs_off_for_retry_after_then_delivers(tmp_path: Path, fake_influx: FakeInflux) -> None:
    fake_influx.script = lambda n, _: (429, {"Retry-After": "1"}, "slow down") if n == 0 else (204, {}, "")
    s = await run_sink(tmp_path, fake_influx.url)
    await publish(s.rt, 5)
    await eventually(lambda: len(fake_influx.accepted) == 5, what="delivery after 429")
    await s.close()
    (t_first, st_first, _), (t_second, _, _) = fake_influx.requests[:2]
    assert st_first == 429
    assert t_second - t_first >= 0.95  # Retry-After honoured
    assert s.fw.stats.write_errors["retry"] == 1


async def test_413_splits_the_batch(tmp_path: Path, fake_influx: FakeInflux) -> None:
    fake_influx.script = lambda n, lines: (413, {}, "too large") if len(lines) > 3 else (204, {}, "")
    s = await run_sink(tmp_path, fake_influx.url)
    await publish(s.rt, 20)
    await eventually(lambda: len(fake_influx.accepted) == 20, what="all points in small requests")
    await s.close()
    assert sorted(fake_influx.accepted) == sorted(set(fake_influx.accepted))
    assert all(len(lines) <= 3 for _, status, lines in fake_influx.requests if status == 204)
    assert s.fw.dead.counts.total() == 0
    assert s.fw.buffer.stats.points == 0


async def test_400_moves_only_the_bad_points_to_the_dead_letter_file(
    tmp_path: Path, fake_influx: FakeInflux
) -> None:
    def script(n: int, lines: list[str]) -> Answer:
        if any("device=BAD" in ln for ln in lines):
            return 400, {}, '{"code":"invalid","message":"field type conflict"}'
        return 204, {}, ""

    fake_influx.script = script
    s = await run_sink(tmp_path, fake_influx.url)
    await publish(s.rt, 6)
    await publish(s.rt, 2, device="BAD", start=6)
    await publish(s.rt, 6, start=8)
    await eventually(
        lambda: len(fake_influx.accepted) == 12 and s.fw.dead.counts["rejected"] == 2, what="all settled"
    )
    await s.close()
    assert s.fw.buffer.stats.points == 0
    dead = [json.loads(x) for x in (tmp_path / "state/deadletter.jsonl").read_text().splitlines()]
    assert len(dead) == 2
    assert all("device=BAD" in d["line"] and d["status"] == 400 for d in dead)
    assert "field type conflict" in dead[0]["reason"]
    assert s.fw.dead.counts["rejected"] == 2


async def test_401_keeps_the_points_and_says_so(tmp_path: Path, fake_influx: FakeInflux) -> None:
    refuse = [True]
    fake_influx.script = lambda n, lines: (401, {}, "unauthorized access") if refuse[0] else (204, {}, "")
    s = await run_sink(tmp_path, fake_influx.url)
    await publish(s.rt, 4)
    await eventually(lambda: s.fw.stats.config_error == 401, what="the auth error")
    assert s.fw.buffer.stats.points == 4 and not fake_influx.accepted
    refuse[0] = False  # the operator fixed the token
    await eventually(lambda: len(fake_influx.accepted) == 4, timeout=30, what="delivery after the fix")
    await s.close()
    assert s.fw.stats.config_error == 0
    assert s.fw.dead.counts.total() == 0


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
