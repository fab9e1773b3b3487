"""The writer's requests (http.client over one kept-alive connection): the same request influxdb-client
made (path, query, headers, body), one connection for many writes, a connection the server dropped while
idle replaced without failing the write, and a server that is not there answered as unreachable. The
answers' meaning (429, 413, 400, 401 ...) is tested through the forwarder in test_errors.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from gateway.config.store import InfluxConfig
from gateway.sink.influx import InfluxWriter


@dataclass
class Server:
    url: str = ""
    connections: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    drop_after_answer: bool = False  # close each connection after answering, without saying so


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as InfluxDB and VictoriaMetrics answer

        def setup(self) -> None:
            super().setup()
            with lock:
                state.connections += 1

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()
            if state.drop_after_answer:
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_writes_share_one_connection_and_make_influxdb_clients_request(server: Server) -> None:
    cfg = InfluxConfig(url=server.url, org="my org", bucket="b&1", token=SecretStr("s3cret"))
    writer = InfluxWriter(cfg)
    try:
        assert writer.write_body(b"m f=1.0 1").kind == "ok"
        assert writer.write(["m f=2.0 2", "m f=3.0 3"]).kind == "ok"
        assert writer.write_body("m f=4.0 4").kind == "ok"
    finally:
        writer.close()
    assert server.connections == 1
    assert [r[2] for r in server.requests] == [b"m f=1.0 1", b"m f=2.0 2\nm f=3.0 3", b"m f=4.0 4"]
    path, headers, _ = server.requests[0]
    assert path == "/api/v2/write?org=my+org&bucket=b%261&precision=us"
    assert headers["Authorization"] == "Token s3cret"
    assert headers["Content-Type"] == "text/plain"


def test_no_token_no_authorization_header(server: Server) -> None:
    writer = InfluxWriter(InfluxConfig(url=server.url))
    try:
        assert writer.write_body(b"m f=1.0 1").kind == "ok"
    finally:
        writer.close()
    assert "Authorization" not in server.requests[0][1]


def test_a_connection_dropped_while_idle_is_replaced_and_the_write_succeeds(server: Server) -> None:
    server.drop_after_answer = True
    writer = InfluxWriter(InfluxConfig(url=server.url))
    try:
        outcomes = [writer.write_body(f"m f={i}.0 {i}".encode()).kind for i in range(3)]
    finally:
        writer.close()
    assert outcomes == ["ok", "ok", "ok"]
    assert [r[2] for r in server.requests] == [b"m f=0.0 0", b"m f=1.0 1", b"m f=2.0 2"]
    assert server.connections == 3


def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nobody listens there
    writer = InfluxWriter(InfluxConfig(url=f"http://127.0.0.1:{port}", timeout=2.0))
    outcome = writer.write_body(b"m f=1.0 1")
    writer.close()
    assert outcome.kind == "unreachable" and outcome.status is None
    assert "ConnectionRefusedError" in outcome.message
