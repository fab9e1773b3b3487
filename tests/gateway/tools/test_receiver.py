"""The local notice receiver (gateway/tools/receiver.py) that the demo and the benches share."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Mapping

import pytest

from bench.receiver import BenchReceiver
from gateway.tools.receiver import LocalReceiver


def test_every_request_reaches_the_callback_and_gets_200() -> None:
    got: list[tuple[str, dict[str, str], bytes]] = []
    arrived = threading.Event()

    def on_request(path: str, headers: Mapping[str, str], body: bytes) -> None:
        got.append((path, dict(headers), body))
        arrived.set()

    with LocalReceiver(on_request) as rx:
        assert rx.port != 0 and rx.address == f"http://127.0.0.1:{rx.port}"
        req = urllib.request.Request(
            f"{rx.address}/staff?x=1",
            data=b'{"title": "t"}',
            headers={"X-Meterwatch-Key": "incident:3/open/staff"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b"{}")
        assert arrived.wait(5)
        with urllib.request.urlopen(f"{rx.address}/ping", timeout=5) as resp:
            assert resp.status == 200
    path, headers, body = got[0]
    assert (path, body) == ("/staff?x=1", b'{"title": "t"}')
    assert headers["X-Meterwatch-Key"] == "incident:3/open/staff"
    assert [g[0] for g in got] == ["/staff?x=1", "/ping"] and got[1][2] == b""
    with pytest.raises(OSError):  # stopped: the port no longer answers
        urllib.request.urlopen(f"http://127.0.0.1:{rx.port}/", timeout=2)


def test_bench_receiver_records_hits_without_the_query() -> None:
    with BenchReceiver() as rx:
        assert rx.url("json", "/staff") == f"json://127.0.0.1:{rx.port}/staff"
        req = urllib.request.Request(f"http://127.0.0.1:{rx.port}/staff?a=b", data=b'{"message": "m"}')
        urllib.request.urlopen(req, timeout=5).close()
        hit = rx.wait_for(lambda hits: hits[0] if hits else None, 5, "the hit")
    assert (hit.path, hit.json()) == ("/staff", {"message": "m"})
    assert rx.count("/staff") == 1 and rx.count("/other") == 0
