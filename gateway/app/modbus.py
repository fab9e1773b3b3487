"""The site file's Modbus lines and devices, turned into the driver's plain specs and line actors."""

from __future__ import annotations

from drivers.modbus.line import LineActor
from drivers.modbus.planner import DEFAULT_MAX_GAP, ReadRequest, plan_reads
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.config import Device, Line, Site
from gateway.core.bus import Bus


def line_spec(line: Line) -> LineSpec:
    return LineSpec(
        id=line.id,
        transport=line.transport,
        host=line.host,
        port=line.port,
        device=line.device,
        baudrate=line.baudrate,
        parity=line.parity,
        bytesize=line.bytesize,
        stopbits=line.stopbits,
        timeout=float(line.timeout),
        retries=line.retries,
        inter_request_delay=float(line.inter_request_delay),
        max_connections=line.max_connections,
        down_after=line.down_after,
        backoff_max=float(line.backoff_max),
        client=line.client,
        pipeline=line.pipeline,
    )


def device_spec(site: Site, device: Device) -> DeviceSpec:
    assert device.profile is not None
    profile = site.profiles[device.profile]
    wanted = set(device.quantities) if device.quantities else None
    points = [p for p in profile.points if wanted is None or p.quantity in wanted]
    unit = device.unit if device.unit is not None else profile.default_unit
    max_registers = device.max_registers_per_read or profile.max_registers_per_read
    max_gap = device.max_gap if device.max_gap is not None else DEFAULT_MAX_GAP

    def plan(info: bool) -> list[ReadRequest]:
        return plan_reads(points, unit, max_registers, max_gap, device.one_read_per_value, info=info)

    # Info points (strings, serial numbers) are not readings: planned apart, read when the device comes up.
    requests, info_requests = plan(info=False), plan(info=True)
    return DeviceSpec(
        id=device.id,
        unit=unit,
        poll_interval=float(device.poll_interval),
        requests=tuple(requests),
        profile=profile.name,
        units={p.quantity: p.unit for p in points if not p.info},
        info_requests=tuple(info_requests),
    )


def modbus_specs(site: Site) -> list[tuple[LineSpec, list[DeviceSpec]]]:
    """Every Modbus line of the site with the devices it polls, in file order."""
    return [
        (line_spec(line), [device_spec(site, d) for d in site.devices_on(line.id) if d.source == "modbus"])
        for line in site.config.lines
    ]


def build(site: Site, bus: Bus) -> list[LineActor]:
    """One line actor per Modbus line that has devices; they publish to the bus.

    The k-th of K lines starts its schedule at phase k/K: the devices of all lines begin their cycles spread
    over the poll interval, not every line in step (issue 11: +10 % requests/s, 4x fewer skipped cycles).
    """
    polled = [(line, devices) for line, devices in modbus_specs(site) if devices]
    count = len(polled)
    return [
        LineActor(line, devices, bus.publish, phase=k / count) for k, (line, devices) in enumerate(polled)
    ]
