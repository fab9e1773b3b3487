"""systemd's notify protocol: `meterwatch run` under a NOTIFY_SOCKET of our own (a unix datagram socket,
as systemd gives a Type=notify unit) sends READY=1 once it is ready, WATCHDOG=1 at half of WatchdogSec,
and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.observe.sdnotify import SystemdNotifier, notify, watchdog_interval
from tests.fixtures.sim import SimHandle
from tests.gateway.observe.test_metrics import http_get, with_sections
from tests.helpers import free_port


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "unix socket paths are limited to 107 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


class Inbox:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[tuple[float, str]] = []  # (monotonic time received, datagram)

    def wait_for(self, text: str, timeout: float, count: int = 1) -> float:
        """Receive until `count` datagrams containing `text` arrived; returns when the last one came."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [t for t, m in self.messages if text in m.split("\n")]
            if len(hits) >= count:
                return hits[count - 1]
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {count}x {text!r} within {timeout}s; got {[m for _, m in self.messages]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))


def test_run_sends_ready_watchdog_and_stopping(
    sim: SimHandle, tmp_path: Path, notify_socket: socket.socket
) -> None:
    port = free_port()
    site = with_sections(sim.site_path, f"http: {{port: {port}}}\n")
    env = dict(
        os.environ,
        NOTIFY_SOCKET=notify_socket.getsockname(),
        WATCHDOG_USEC="400000",  # WatchdogSec=0.4s: a ping every 0.2 s
        PYTHONUNBUFFERED="1",
    )
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", str(site)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "run.log").open("wb"),
    )
    inbox = Inbox(notify_socket)
    try:
        inbox.wait_for("READY=1", timeout=60)
        # READY=1 means ready: /readyz says so at that moment (no wait).
        status, body = http_get(port, "/readyz")
        assert status == 200, body
        first = inbox.wait_for("WATCHDOG=1", timeout=30)
        fifth = inbox.wait_for("WATCHDOG=1", timeout=30, count=5)
        assert fifth > first  # keeps pinging while it runs
        assert sum("READY=1" in m for _, m in inbox.messages) == 1  # sent once
        proc.send_signal(signal.SIGTERM)
        inbox.wait_for("STOPPING=1", timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ready = next(m for _, m in inbox.messages if "READY=1" in m)
    assert "STATUS=collecting" in ready


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify("READY=1", env={}) is False
    assert watchdog_interval({}) is None


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None  # another process
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_abstract_namespace_socket() -> None:
    name = f"meterwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"READY=1"


def test_a_gone_socket_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": str(tmp_path / "missing.sock")}) is False


def drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    got: list[bytes] = []
    try:
        while True:
            got.append(sock.recv(100))
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return got


async def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "100000"}  # a ping every 50 ms
    stop = asyncio.Event()
    task = asyncio.create_task(SystemdNotifier(lambda: True, env).run(stop))
    inbox = Inbox(notify_socket)
    try:
        await asyncio.to_thread(inbox.wait_for, "WATCHDOG=1", 10, 3)
        # From here to the second drain this coroutine holds the loop, so the notifier cannot run.
        drain(notify_socket)
        time.sleep(0.6)  # the loop hangs (this is the fault under test, not a wait for an event)
        assert drain(notify_socket) == [], "pings were sent while the loop was blocked"
        pings = sum(m == "WATCHDOG=1" for _, m in inbox.messages)
        await asyncio.to_thread(inbox.wait_for, "WATCHDOG=1", 10, pings + 1)  # and resume after it
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
