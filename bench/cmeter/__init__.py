"""The C meter server of the benches (cmeter.c on libmodbus): built here, its register image from the
Python simulator, started on ports the kernel picks.

Why: the polling benches measure Python clients near their limit; the Python simulator and pymodbus's server
top out near 3-10k requests/s on this machine and would be what is measured. One C process with epoll
serves every meter (one TCP port each) from one register image: the words the Python simulator's World
gives an SDM630 (noise off, at a fixed instant), so a read here equals the same read there.

libmodbus comes from Debian's `libmodbus-dev`, installed with apt-get when its header is missing (as
scripts/bootstrap does for the other packages); the binary is built with gcc into .bench-build/ (named by
a hash of the source, so an edit rebuilds it), never committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("cmeter.c")
BUILD_DIR = ROOT / ".bench-build"
HEADER = Path("/usr/include/modbus/modbus.h")
INPUT_COUNT = 0xD0  # as in cmeter.c
HOLDING_START, HOLDING_COUNT = 0xFC00, 2
IMAGE_INSTANT = 1_772_416_800.0  # the simulator's clock when the image is taken (any fixed instant)
DESCRIPTION = "cmeter (bench/cmeter/cmeter.c: one C process on libmodbus, epoll, one TCP port per meter)"


class CMeterError(RuntimeError):
    """The C meter server could not be installed, built or started (the message says which and why)."""


def ensure_libmodbus() -> None:
    """Install Debian's libmodbus-dev when its header is missing (root, or sudo without a password)."""
    if HEADER.exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]):
        full = sudo + cmd + (["libmodbus-dev"] if "install" in cmd else [])
        r = subprocess.run(full, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise CMeterError(f"installing libmodbus-dev failed: {' '.join(full)}: {r.stderr.strip()[-500:]}")
    if not HEADER.exists():
        raise CMeterError(f"libmodbus-dev installed but {HEADER} is missing")


def build() -> Path:
    """The server binary, compiled with gcc once per version of cmeter.c."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = BUILD_DIR / f"cmeter-{digest}"
    if binary.exists():
        return binary
    ensure_libmodbus()
    gcc = shutil.which("gcc")
    if gcc is None:
        raise CMeterError("gcc is not on PATH: the C meter server cannot be built")
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    cmd = [gcc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE), f"-I{HEADER.parent}", "-lmodbus"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CMeterError(f"building {SOURCE.name} failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    tmp.replace(binary)
    return binary


def simulator_words(function: str, address: int, count: int) -> list[int]:
    """The registers an SDM630 of the Python simulator reads at IMAGE_INSTANT (noise off)."""
    from gateway.config import load_site
    from simulators.modbus_server import build_image, read_words
    from simulators.world import World

    with tempfile.TemporaryDirectory(prefix="cmeter-") as tmp:
        site_file = Path(tmp) / "site.yaml"
        site_file.write_text(
            "site: {id: cmeter, name: cmeter image}\n"
            "buildings:\n  - id: B1\n    domains: [{id: B1-power, kind: power}]\n"
            "lines:\n  - {id: m0, transport: tcp, host: 127.0.0.1, port: 1502}\n"
            "devices:\n  - {id: meter0, building: B1, domain: B1-power, line: m0, unit: 1,"
            " profile: sdm630}\n",
            encoding="utf-8",
        )
        site = load_site(site_file)
    device = site.config.devices[0]
    profile = site.profiles[str(device.profile)]
    world = World(site, clock=lambda: IMAGE_INSTANT)
    fmap = build_image(profile)[function]
    return read_words(world, device.id, fmap, address, count, IMAGE_INSTANT)


def image_bytes() -> bytes:
    words = simulator_words("input", 0, INPUT_COUNT)
    words += simulator_words("holding", HOLDING_START, HOLDING_COUNT)
    return b"".join(w.to_bytes(2, "big") for w in words)


class CMeterServer:
    """`with CMeterServer(n) as server:` n meters on server.ports; server.stats(), server.pid."""

    def __init__(self, meters: int) -> None:
        self.meters = meters
        self.ports: list[int] = []
        self._proc: subprocess.Popen[str] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._lines: list[str] = []
        self._got = threading.Condition()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def __enter__(self) -> CMeterServer:
        binary = build()
        self._tmp = tempfile.TemporaryDirectory(prefix="cmeter-")
        image = Path(self._tmp.name) / "sdm630.img"
        image.write_bytes(image_bytes())
        self._proc = subprocess.Popen(
            [str(binary), str(image), str(self.meters)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if not first.startswith("PORTS"):
            self._proc.kill()
            _, err = self._proc.communicate(timeout=10)
            raise CMeterError(f"cmeter did not start: {first.strip()} {err.strip()}")
        self.ports = [int(p) for p in first.split()[1:]]
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._got:
                self._lines.append(line.strip())
                self._got.notify_all()

    def stats(self, timeout: float = 5.0) -> tuple[int, int, int]:
        """(requests, registers read, failed replies) served so far."""
        assert self._proc is not None
        with self._got:
            seen = len(self._lines)
            self._proc.send_signal(signal.SIGUSR1)
            if not self._got.wait_for(lambda: len(self._lines) > seen, timeout):
                raise CMeterError("cmeter did not answer SIGUSR1 with its counters")
            req, regs, err = (int(x) for x in self._lines[-1].split()[1:4])
        return req, regs, err

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        if self._tmp is not None:
            self._tmp.cleanup()
