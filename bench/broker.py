"""A throw-away mosquitto on a free loopback port, for the benches that need a real broker.

tests/fixtures/ has the tests' broker (pytest fixtures); the benches start their own without pytest.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(work: Path, settings: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto listening on 127.0.0.1 at a free port, its configuration in `work`, anonymous, without
    persistence or logs; `settings` (mosquitto.conf lines) are added. Returns the process, to be terminated
    by the caller, and the port, once it accepts connections; SystemExit if it does not within 10 s."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
        f"{settings}log_dest none\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"mosquitto did not start on port {port}")
