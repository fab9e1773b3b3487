"""`make demo`: the simulated compound, a local MQTT broker and the gateway, with a live table of readings,
and the whole response loop on the scenario's incidents.

Nothing outside this machine is needed: the simulators serve every device of the site file on the site's own
endpoints (Modbus TCP, RTU over TCP, RTU on a pseudo-terminal, MQTT), and the gateway polls them as it would
real meters. Its notices go to a receiver of the demo's own (demo_receiver.py) through a copy of the site
file with local channels and short delays (demo_site.py), and show in a pane under the readings
(demo_pane.py); the demo acknowledges each dispatch with `meterwatch ack` and writes each dispatched
incident's report with `meterwatch report` once it is over (demo_loop.py), prints the report's path and
stops when its scenario has played (--stay: keep running; Ctrl-C stops it at any time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.app.daemon import Component, build_runtime, serve
from gateway.cli.broker import local_broker
from gateway.cli.demo_loop import ACK_AFTER, DemoLoop
from gateway.cli.demo_pane import MessagePane
from gateway.cli.demo_receiver import DemoReceiver
from gateway.cli.demo_site import CHANNELS, DEMO_CONFIRM, DEMO_VERIFY, DemoSite, derive
from gateway.cli.live import LiveView
from gateway.config import ConfigError, Site, load_site
from gateway.observe.logs import setup_logging
from simulators.scenario import load_scenario, timeline_lines

if TYPE_CHECKING:
    from simulators.mqtt_publisher import MqttPublisher
    from simulators.runner import SiteSimulator
    from simulators.scenario import Scenario, TimedAction

DEFAULT_SITE = Path(__file__).parents[2] / "deploy/examples/compound.yaml"
DEFAULT_SCENARIO = Path(__file__).parents[2] / "deploy/examples/scenarios/demo.yaml"
SETTLE = 60.0  # s the demo waits, its loop over, for the incidents still open to resolve


def print_timeline(scenario: Scenario) -> None:
    """What will happen when, before it does: nobody should stop the demo a minute before the outage."""
    where = f" ({scenario.path.name})" if scenario.path else ""
    print(f"demo: scenario {scenario.name}{where}: {scenario.model.description}".rstrip(": "), flush=True)
    print("demo: what happens when (from the start; Ctrl-C stops the demo):", flush=True)
    for line in timeline_lines(scenario):
        print(f"demo:   {line}", flush=True)


def print_step(action: TimedAction) -> None:
    print(f"demo: +{action.t:g}s {action.label}", flush=True)


def scenario_footer(sim: SiteSimulator) -> Callable[[], str]:
    """The live table's last line: where the scenario is and what comes next."""

    def footer() -> str:
        now = sim.scenario_time()
        if now is None:
            return ""
        nxt = sim.next_step()
        after = f" · next: +{nxt.t:g}s {nxt.label}" if nxt is not None else " · scenario done"
        return f"scenario +{now:.0f}s{after}"

    return footer


def print_loop(demo: DemoSite, receiver: DemoReceiver, output: Path) -> None:
    """What the demo does with the incidents, before it does it."""
    channels = ", ".join(f"{name} ({', '.join(aud)})" for name, aud in CHANNELS.items())
    for line in (
        f"notices go to a local receiver at {receiver.address} and show in the messages pane: {channels}",
        f"the demo's site file: {demo.path} (channels, delays and an API token of the demo's own)",
        f"residents hear of an outage {DEMO_CONFIRM:g}s after it opened (a real site waits 3 min for power), "
        f"and get the all-clear {DEMO_VERIFY:g}s after it resolved (real: 10 min)",
        f"a dispatch is acknowledged {ACK_AFTER:g}s after it arrives, by the demo as the on-call engineer "
        f"({demo.responder}) running `meterwatch ack ID` against the gateway's API at {demo.api}",
        f"once it is over, `meterwatch report ID` writes the incident report into {output}/; then the "
        "demo stops",
    ):
        print(f"demo: {line}", flush=True)


async def run_demo(
    site_path: Path,
    scenario: Scenario | None,
    duration: float | None,
    plain: bool | None,
    state_dir: Path,
    output: Path,
    stay: bool = False,
) -> int:
    from simulators.runner import SiteSimulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        receiver = DemoReceiver().start()
        stack.callback(receiver.stop)
        demo = derive(load_site(site_path), site_path, state_dir, receiver)
        site = load_site(demo.path)
        print_loop(demo, receiver, output)
        mqtt = site.config.mqtt
        if mqtt is not None:
            broker = await stack.enter_async_context(local_broker(mqtt.host, mqtt.port))
            print(f"demo: MQTT broker: {broker}", flush=True)
        # The MQTT sensors start publishing only once the gateway has subscribed: on a fresh broker there is
        # no session yet, and a reading published before the subscription would be lost (a real sensor
        # would publish again; the demo's slowest sensor only every 10 s).
        sim = await stack.enter_async_context(
            SiteSimulator(site, scenario=scenario, mqtt=False, on_step=print_step)
        )
        for line in sim.describe():
            print(f"demo: simulator: {line}", flush=True)
        rt = build_runtime(site, state_dir=state_dir)
        view = LiveView.attach(site, rt.bus, plain=plain)
        view.incidents = rt.services.incidents
        if scenario is not None:
            view.footer = scenario_footer(sim)
        pane = MessagePane(view.tz, title=f"messages (receiver {receiver.address})", plain=view.plain)
        view.pane = pane
        rt.components.append(view)
        loop_ = DemoLoop(receiver, pane, demo, state_dir, output)
        started = time.time()
        serving = asyncio.create_task(serve(rt, stop), name="gateway")
        playing = asyncio.create_task(loop_.run(stop), name="demo-loop")
        ending = None
        if scenario is not None and not stay:
            ending = asyncio.create_task(_stop_when_over(loop_, sim, view, stop), name="demo-end")
        publisher = await _publish_when_subscribed(site, sim, rt.components, stop)
        try:
            await serving
        finally:
            stop.set()
            if ending is not None:
                ending.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            if publisher is not None:
                await publisher.stop()
        if view.first_reading_at is None:
            print("demo: no reading arrived; see the log lines above", file=sys.stderr)
            return 1
        print(f"demo: first reading {view.first_reading_at - started:.1f}s after start", flush=True)
        for case in loop_.cases.values():
            if case.report:
                kinds = sorted({p.suffix.lstrip(".") for p in case.report})
                print(
                    f"demo: incident {case.incident}'s report ({', '.join(kinds)}): {case.report[0].parent}/",
                    flush=True,
                )
        html = [p for p in loop_.reports if p.suffix == ".html"]
        if html:
            print(f"demo: incident report: {html[0]}", flush=True)
        elif loop_.cases:
            print(f"demo: stopped before the incident report was written (it goes to {output}/)", flush=True)
    return 0


async def _stop_when_over(loop_: DemoLoop, sim: SiteSimulator, view: LiveView, stop: asyncio.Event) -> None:
    """Stop the demo once every dispatched incident has its report, the scenario has no step left and no
    incident is open (the final screen shows the site quiet again); an incident that stays open keeps the
    demo at most SETTLE seconds longer."""
    over_at: float | None = None
    while not stop.is_set():
        if loop_.done.is_set() and sim.next_step() is None:
            over_at = over_at or time.monotonic()
            if not view.open_incidents() or time.monotonic() - over_at > SETTLE:
                loop_.say(
                    "the loop is complete (detected, told, acknowledged, all clear, reported): stopping"
                )
                stop.set()
                return
        await asyncio.sleep(0.5)


async def _publish_when_subscribed(
    site: Site, sim: SiteSimulator, components: list[Component], stop: asyncio.Event
) -> MqttPublisher | None:
    """Start the simulated MQTT sensors once the gateway's subscriber is subscribed (or after 5 s anyway)."""
    from drivers.mqtt.subscriber import MqttSubscriber
    from simulators.mqtt_publisher import MqttPublisher

    if site.config.mqtt is None or not any(d.source == "mqtt" for d in site.config.devices):
        return None
    subscribers = [c for c in components if isinstance(c, MqttSubscriber)]
    deadline = time.monotonic() + 5.0
    while not stop.is_set() and time.monotonic() < deadline and not all(s.subscribed for s in subscribers):
        await asyncio.sleep(0.05)
    if stop.is_set():
        return None
    publisher = MqttPublisher(site, sim.world)
    await publisher.start()
    names = ", ".join(f"{p.device.id} ({p.sub.format} {p.sub.topic})" for p in publisher.publications)
    print(f"demo: simulator: {publisher.endpoint}: {names}", flush=True)
    return publisher


def default_scenario(site_path: Path) -> Path | None:
    """The demo scenario plays on the example site however its path is written (`make demo` passes it
    relative); another site gets none, since the scenario names the example's devices."""
    if DEFAULT_SCENARIO.exists() and site_path.resolve() == DEFAULT_SITE.resolve():
        return DEFAULT_SCENARIO
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meterwatch-demo", description=__doc__)
    ap.add_argument("site", nargs="?", type=Path, default=DEFAULT_SITE)
    ap.add_argument(
        "--scenario", type=Path, default=None, help="default: deploy/examples/scenarios/demo.yaml"
    )
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--plain", action="store_true", help="print text snapshots instead of a live table")
    ap.add_argument("--state-dir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="folder the incident reports are written to, kept after the demo (default: ./demo-output)",
    )
    ap.add_argument(
        "--stay", action="store_true", help="keep running after the report is written, until Ctrl-C"
    )
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    try:
        site = load_site(args.site)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    scenario_path = args.scenario if args.scenario is not None else default_scenario(args.site)
    try:
        scenario = None if scenario_path is None else load_scenario(scenario_path, site)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if scenario is not None:
        print_timeline(scenario)
    plain = True if args.plain else None
    output = (args.output / time.strftime("%Y%m%d-%H%M%S")).resolve()
    with tempfile.TemporaryDirectory(prefix="meterwatch-demo-") as tmp:
        state_dir = args.state_dir or Path(tmp)
        try:
            return asyncio.run(
                run_demo(args.site, scenario, args.duration, plain, state_dir, output, stay=args.stay)
            )
        except KeyboardInterrupt:
            return 0
        except RuntimeError as exc:  # no broker to be had: say what to install
            print(f"demo: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
