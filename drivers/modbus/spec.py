"""What the Modbus driver needs to know about a line and its devices, as plain data.

The driver never reads the site file: gateway/app/modbus.py turns the site config into these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from drivers.modbus.planner import ReadRequest

Transport = Literal["tcp", "rtu", "rtu_over_tcp"]
Client = Literal["builtin", "pymodbus"]

# Device information (serial number, firmware) is read when a device comes up and then at most this often:
# it changes only when the meter is replaced or updated, and a swap makes the device drop out and come back.
INFO_REFRESH = 3600.0


@dataclass(frozen=True)
class LineSpec:
    id: str
    transport: Transport
    host: str | None = None
    port: int | None = None
    device: str | None = None  # serial port path, for rtu
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: int = 8
    stopbits: int = 1
    timeout: float = 1.0
    retries: int = 0
    inter_request_delay: float = 0.0
    max_connections: int = 1
    down_after: int = 3
    backoff_max: float = 300.0
    backoff_min: float = 1.0  # first re-probe delay of a down device
    # Modbus TCP lines: the built-in client (drivers/modbus/tcp.py) or pymodbus (the reference); RTU framing
    # is always read through pymodbus.
    client: Client = "builtin"
    pipeline: int = 1  # requests outstanding per connection (built-in client only)

    @property
    def endpoint(self) -> str:
        if self.transport == "rtu":
            return f"{self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return f"{self.host}:{self.port}"

    @property
    def builtin_client(self) -> bool:
        """True when the line is read through the built-in Modbus TCP client rather than pymodbus."""
        return self.transport == "tcp" and self.client == "builtin"

    @property
    def serial_timing(self) -> bool:
        """True when frames cross a serial bus (RTU, or RTU over a serial device server)."""
        return self.transport in ("rtu", "rtu_over_tcp")


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    unit: int
    poll_interval: float
    requests: tuple[ReadRequest, ...]
    profile: str = ""
    units: dict[str, str] = field(default_factory=dict)  # quantity -> engineering unit
    info_requests: tuple[ReadRequest, ...] = ()  # reads of the info points (strings, serial numbers)
    info_refresh: float = INFO_REFRESH

    @property
    def register_reads(self) -> int:
        return len(self.requests)
