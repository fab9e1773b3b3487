"""The HTTP server under connection exhaustion (issue 8, item 4), against `meterwatch run` in a subprocess
limited to 512 open files, and 600 real connections that never send a request.

Before the guard, the daemon ran out of descriptors, /healthz timed out and asyncio logged every failed
accept (591,525 tracebacks in 45 s). Now connections past the cap are closed at once, the silent ones are
closed when their headers are late, /healthz answers, and the accept error (if any) is a line a minute.
"""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import free_port, wait_until

SITE = """\
site: {{id: exhaust, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
http: {{host: 127.0.0.1, port: {port}}}
"""
HALF_OPEN = 600
NOFILE = 512


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def status(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def test_six_hundred_silent_connections_do_not_take_the_server_down(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(port=port), encoding="utf-8")
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", str(site), "--state-dir", str(tmp_path / "state")],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_limit,
    )
    base = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    try:
        wait_until(lambda: status(f"{base}/healthz")[0] == 200, timeout=60, what="the daemon serving")
        for _ in range(HALF_OPEN):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never completed
            socks.append(s)

        # every one of them is closed by the server: at once past the cap, the others when late
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        closed: set[int] = set()

        def all_closed() -> bool:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed.add(sock.fileno())
                    sel.unregister(sock)
            return len(closed) == HALF_OPEN

        wait_until(all_closed, timeout=60, interval=0.0, what="the server closing the silent connections")
        # and it still serves: liveness, HEAD on a GET route, the API
        assert status(f"{base}/healthz")[0] == 200
        code, body = status(f"{base}/healthz", "HEAD")
        assert (code, body) == (200, b"")
        assert status(f"{base}/api/incidents", "HEAD")[0] == 200
        assert status(f"{base}/api/incidents/99999999999999999999")[0] == 404
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "meterwatch_http_connections_refused_total" in metrics
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.close()
    text = (tmp_path / "daemon.log").read_text(encoding="utf-8", errors="replace")
    assert text.count("out of system resource") <= 2, text[-2000:]
    assert len(text) < 200_000  # no flood of tracebacks
