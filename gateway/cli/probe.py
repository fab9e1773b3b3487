"""`meterwatch probe`: read registers of one Modbus device once and print every interpretation."""

from __future__ import annotations

import typer


def probe(
    host: str | None = typer.Option(None, help="Modbus TCP host (or serial device server)"),
    port: int = typer.Option(502, help="TCP port"),
    serial: str | None = typer.Option(None, help="serial port, e.g. /dev/ttyUSB0 (RTU)"),
    rtu_over_tcp: bool = typer.Option(False, help="RTU framing over TCP (serial device servers)"),
    baudrate: int = typer.Option(9600),
    parity: str = typer.Option("N", help="N, E or O"),
    stopbits: int = typer.Option(1),
    unit: int = typer.Option(1, help="Modbus unit (slave) id"),
    address: str = typer.Option(..., help="0-based PDU address, decimal or 0x hex"),
    count: int = typer.Option(
        2, min=1, max=2000, help="registers (at most 125) or bits (at most 2000) to read"
    ),
    function: str = typer.Option(
        "holding", help="holding (FC03), input (FC04), coil (FC01) or discrete (FC02, discrete inputs)"
    ),
    timeout: float = typer.Option(1.0, help="seconds"),
) -> None:
    """Read registers once and print every interpretation (int16/uint16, 32/64-bit in all four orders), or
    coils / discrete inputs as bits."""
    import asyncio

    from drivers.modbus.probe import run_probe

    where = (host, port, serial, rtu_over_tcp, baudrate, parity, stopbits)
    what = (unit, address, count, function, timeout)
    raise typer.Exit(asyncio.run(run_probe(*where, *what)))
