"""What `meterwatch check` and `meterwatch plan` print about a valid site: lines, reads and cycle times."""

from __future__ import annotations

from collections.abc import Callable

from drivers.modbus import planner
from drivers.modbus.planner import CycleEstimate, estimate_cycle, request_time
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.app.modbus import modbus_specs
from gateway.config import Site
from gateway.config.shard import describe as describe_shard

Echo = Callable[[str], None]


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _verdict(est: CycleEstimate) -> str:
    """What the load means: the share of the shortest poll interval a cycle takes when every device answers
    (typical), and whether a cycle still fits when devices time out (worst case)."""
    if not est.fits:
        return "CANNOT FIT: a cycle outlasts the shortest poll interval even when every device answers"
    if est.fits_worst:
        return "fits, also when devices time out"
    return "fits while devices answer; when some time out, cycles overrun and are skipped (see the warning)"


def _line_head(line: LineSpec, devices: list[DeviceSpec], est: CycleEstimate) -> str:
    interval = _s(est.shortest_interval) if est.shortest_interval is not None else "-"
    return (
        f"line {line.id} ({line.transport} {line.endpoint}): {len(devices)} device(s), "
        f"{est.requests} request(s)/cycle, cycle typical {_s(est.typical)}, worst {_s(est.worst)}, "
        f"shortest poll interval {interval}, load {est.load:.0%} of it: {_verdict(est)}"
    )


def _problems(line: LineSpec, est: CycleEstimate) -> list[str]:
    out = []
    if not est.fits:
        out.append(
            f"  ERROR: line {line.id} needs {_s(est.typical)} per cycle (load {est.load:.0%}) when every "
            f"device answers, more than its shortest poll interval: raise the intervals, move devices "
            f"to another line or raise the baud rate"
        )
    elif not est.fits_worst:
        out.append(
            f"  warning: when its devices fail, a cycle of line {line.id} can take {_s(est.worst)} "
            f"(timeout {_s(line.timeout)} x {1 + line.retries}): cycles will be skipped and counted"
        )
    return out


def print_summary(site: Site, echo: Echo = print) -> bool:
    """Print the site summary. False when some line cannot poll its devices within their intervals."""
    cfg = site.config
    mqtt_devices = [d for d in cfg.devices if d.source == "mqtt"]
    specs = modbus_specs(site)
    n_modbus = sum(len(devs) for _, devs in specs)
    echo(
        f"site {cfg.site.id}" + (f" ({cfg.site.name})" if cfg.site.name else "") + f": "
        f"{len(cfg.buildings)} building(s), {len(cfg.lines)} Modbus line(s) with {n_modbus} device(s), "
        f"{len(mqtt_devices)} MQTT device(s)"
    )
    for text in describe_shard(site.shard):
        echo(text)
    ok = True
    for line, devices in specs:
        est = estimate_cycle(line, devices)
        echo(_line_head(line, devices, est))
        for d in devices:
            echo(
                f"  {d.id}: unit {d.unit} {d.profile}, {len(d.requests)} read(s) every {_s(d.poll_interval)}"
            )
        for msg in _problems(line, est):
            echo(msg)
        ok = ok and est.fits
    if cfg.mqtt is not None:
        echo(
            f"mqtt {cfg.mqtt.host}:{cfg.mqtt.port}: {len(mqtt_devices)} device(s), "
            f"{len(cfg.mqtt.subscriptions)} subscription(s)"
        )
    elif mqtt_devices:
        echo(f"  ERROR: {len(mqtt_devices)} MQTT device(s) but no mqtt section")
        ok = False
    return ok


def print_plan(site: Site, echo: Echo = print) -> bool:
    """Print the exact requests of every line, in the order the poller sends them, and the cycle estimate."""
    for text in describe_shard(site.shard):
        echo(text)
    ok = True
    for line, devices in modbus_specs(site):
        est = estimate_cycle(line, devices)
        echo(_line_head(line, devices, est))
        for d in devices:
            regs = sum(r.count for r in d.requests)
            echo(
                f"  device {d.id} ({d.profile}) every {_s(d.poll_interval)}: "
                f"{len(d.requests)} read(s), {regs} regs"
            )
            for r in d.requests:
                echo(f"    {r.describe()}  ~{_s(request_time(line, r))}")
            for r in d.info_requests:
                echo(
                    f"    info: {r.describe()}  ~{_s(request_time(line, r))} "
                    f"(when the device comes up, then every {d.info_refresh:g} s)"
                )
        for msg in _problems(line, est):
            echo(msg)
        ok = ok and est.fits
    echo(
        f"estimate assumes: TCP round trip {_s(planner.TCP_RTT)}, "
        f"RTU turnaround {_s(planner.RTU_TURNAROUND)}, "
        f"serial frames at the line's baud rate with 3.5-character silences"
    )
    return ok
