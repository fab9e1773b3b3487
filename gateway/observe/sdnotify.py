"""systemd's notify protocol without a dependency: READY=1, WATCHDOG=1, STOPPING=1 over a unix datagram.

Active only when systemd set NOTIFY_SOCKET (Type=notify units). The watchdog interval comes from
WATCHDOG_USEC (WatchdogSec= in the unit); we ping at half of it, from the event loop, so a blocked loop
stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("meterwatch.systemd")


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification; False when not under systemd (or the socket is gone)."""
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notification failed", extra={"fields": {"error": str(exc)}})
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None


class SystemdNotifier:
    """Sends READY=1 once `ready()` holds, then WATCHDOG=1 pings while the loop runs, STOPPING=1 at stop."""

    name = "systemd-notify"

    def __init__(self, ready: Callable[[], bool], env: Mapping[str, str] | None = None) -> None:
        self.ready = ready
        self.env = os.environ if env is None else env

    async def run(self, stop: asyncio.Event) -> None:
        if not self.env.get("NOTIFY_SOCKET"):
            await stop.wait()
            return
        interval = watchdog_interval(self.env)
        tick = min(interval or 1.0, 1.0)
        sent_ready = False
        next_ping = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if not sent_ready and self.ready():
                sent_ready = notify("READY=1\nSTATUS=collecting", self.env)
            if interval is not None and loop.time() >= next_ping:
                notify("WATCHDOG=1", self.env)
                next_ping = loop.time() + interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)
        notify("STOPPING=1", self.env)
