"""Run every simulator of a site (Modbus lines, MQTT sensors, a scenario) in one asyncio loop.

    async with SiteSimulator(site, scenario=None) as sim:   # in async code (tests, benches)
        sim.world.cut_power("B1")

    with SimulatorThread(site) as sim:                      # in synchronous tests: its own loop and thread
        sim.world.stop_device("B2-shop")                   # World is thread-safe

    proc = SimulatorProcess.spawn(site_path)                # in its own process (`meterwatch simulate`)

Time: the world's clock is virtual time, wall time at the start plus elapsed time multiplied by `speed`, so a
scenario can run faster than real time (energy counters grow faster too). A scenario's step `at: 30s` fires
30 / speed real seconds after the start. Tests that want values that never change pass `clock=lambda: t0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gateway.config import Site
from gateway.core.loopthread import LoopThread
from simulators.modbus_server import LineServer, build_line_servers
from simulators.mqtt_publisher import MqttPublisher
from simulators.scenario import Scenario, TimedAction, load_scenario
from simulators.world import Clock, World

log = logging.getLogger("meterwatch.sim")

READY = "simulator ready"


class VirtualClock:
    """Wall time at creation plus elapsed monotonic time times `speed`."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.t0 = time.time()
        self.m0 = time.monotonic()

    def __call__(self) -> float:
        return self.t0 + (time.monotonic() - self.m0) * self.speed


class SiteSimulator:
    """All simulated devices of a site. Use as `async with`, or call start() and stop()."""

    def __init__(
        self,
        site: Site,
        scenario: Scenario | str | Path | None = None,
        *,
        speed: float = 1.0,
        clock: Clock | None = None,
        seed: int = 0,
        noise: float = 0.0,
        mqtt: bool = True,
        on_step: Callable[[TimedAction], None] | None = None,
    ) -> None:
        self.site = site
        if isinstance(scenario, str | Path):
            scenario = load_scenario(scenario, site)  # raises ConfigError naming file:line
        self.scenario = scenario
        self.speed = speed
        self.clock: Clock = clock if clock is not None else VirtualClock(speed)
        self.world = World(site, clock=self.clock, seed=seed, noise=noise)
        self.lines: dict[str, LineServer] = {s.line.id: s for s in build_line_servers(site, self.world)}
        has_mqtt_devices = any(d.source == "mqtt" for d in site.config.devices)
        self.mqtt: MqttPublisher | None = (
            MqttPublisher(site, self.world) if mqtt and has_mqtt_devices and site.config.mqtt else None
        )
        self.scenario_done = asyncio.Event()
        self.applied: list[tuple[float, str]] = []  # (scenario time, label) of every action applied
        self.on_step = on_step  # told of every step once applied (the demo prints them as they happen)
        self.scenario_started: float | None = None  # monotonic time the scenario began
        self._scenario_task: asyncio.Task[None] | None = None
        self._started: list[LineServer] = []

    async def start(self) -> None:
        try:
            for server in self.lines.values():
                await server.start()
                self._started.append(server)
            if self.mqtt is not None:
                await self.mqtt.start()
        except BaseException:
            await self.stop()
            raise
        if self.scenario is not None:
            self._scenario_task = asyncio.create_task(self._play(self.scenario), name="sim-scenario")
        else:
            self.scenario_done.set()

    async def stop(self) -> None:
        if self._scenario_task is not None:
            self._scenario_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scenario_task
            self._scenario_task = None
        if self.mqtt is not None:
            await self.mqtt.stop()
        for server in reversed(self._started):
            await server.stop()
        self._started.clear()

    async def __aenter__(self) -> SiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> dict[str, str]:
        """What is served where: line id -> endpoint, plus "mqtt" when MQTT devices are published."""
        out = {line_id: s.endpoint for line_id, s in self.lines.items()}
        if self.mqtt is not None:
            out["mqtt"] = f"{self.mqtt.endpoint}: " + ", ".join(
                f"{p.device.id} ({p.sub.format} {p.sub.topic})" for p in self.mqtt.publications
            )
        return out

    def describe(self) -> list[str]:
        """One human line per endpoint served, e.g. "b1-gw: tcp 127.0.0.1:15021"."""
        lines = [f"{name}: {endpoint}" for name, endpoint in self.endpoints().items()]
        if self.scenario is not None:
            lines.append(f"scenario: {self.scenario.name} ({len(self.scenario.actions)} steps)")
        return lines

    def scenario_time(self) -> float | None:
        """Seconds of scenario time since it began (None before it does, or without one)."""
        if self.scenario_started is None:
            return None
        return (time.monotonic() - self.scenario_started) * self.speed

    def next_step(self) -> TimedAction | None:
        """The scenario's next action not yet due, if any."""
        now = self.scenario_time()
        if now is None or self.scenario is None:
            return None
        return next((a for a in self.scenario.actions if a.t > now), None)

    async def _play(self, scenario: Scenario) -> None:
        start = self.scenario_started = time.monotonic()
        for action in scenario.actions:
            delay = start + action.t / self.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                action.apply(self.world)
            except Exception as exc:  # a bad step must not stop the others
                log.error("scenario step at %gs failed: %s: %s", action.t, action.label, exc)
                continue
            self.applied.append((action.t, action.label))
            log.info(
                "scenario t=%gs %s",
                action.t,
                action.label,
                extra={"fields": {"scenario": scenario.name, "t": action.t}},
            )
            if self.on_step is not None:
                self.on_step(action)
        self.scenario_done.set()


class SimulatorThread(LoopThread):
    """A SiteSimulator on its own event loop in a daemon thread, for synchronous tests and tools."""

    thread_name = "site-simulator"

    def __init__(self, site: Site, **kwargs: Any) -> None:
        super().__init__()
        self._kwargs = kwargs
        self._site = site
        self.sim: SiteSimulator | None = None

    @property
    def world(self) -> World:
        assert self.sim is not None, "start() the simulator first"
        return self.sim.world

    async def setup(self) -> None:
        self.sim = SiteSimulator(self._site, **self._kwargs)
        await self.sim.start()

    async def teardown(self) -> None:
        if self.sim is not None:
            await self.sim.stop()

    def call(self, fn: Callable[[SiteSimulator], Any], timeout: float = 10.0) -> Any:
        """Run `fn(sim)` on the simulator's loop and return its result (for loop-bound objects)."""
        assert self._loop is not None and self.sim is not None
        sim = self.sim

        async def run() -> Any:
            return fn(sim)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)


def stop_process_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the child's process group, SIGKILL it after `timeout`; the exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


class SimulatorProcess:
    """`meterwatch simulate` in a child process (benches: keep the simulator's CPU off the gateway's)."""

    def __init__(self, proc: subprocess.Popen[str], endpoints: list[str]) -> None:
        self.proc = proc
        self.endpoints = endpoints

    @classmethod
    def spawn(
        cls,
        site_path: str | Path,
        scenario: str | Path | None = None,
        *,
        args: tuple[str, ...] = (),
        timeout: float = 15.0,
        stderr: IO[str] | int | None = subprocess.DEVNULL,
    ) -> SimulatorProcess:
        cmd = [sys.executable, "-m", "gateway.cli", "simulate", str(site_path), *args]
        if scenario is not None:
            cmd += ["--scenario", str(scenario)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        ready = threading.Event()

        def reader() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.append(text.rstrip("\n"))
                if text.startswith(READY):
                    ready.set()  # keep draining so the child never blocks on a full pipe

        threading.Thread(target=reader, daemon=True).start()
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError("simulator process did not start:\n" + "\n".join(lines))
        return cls(proc, [ln for ln in lines if not ln.startswith(READY)])

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process_group(self.proc, timeout)


async def run_forever(sim: SiteSimulator, duration: float | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `duration` seconds)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        for line in sim.describe():
            print(line, flush=True)
        print(f"{READY} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
