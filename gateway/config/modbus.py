"""The `lines:` section: each physical Modbus line or endpoint the gateway polls."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.config.base import Id, Strict
from gateway.core.durations import Duration


class Line(Strict):
    """One physical Modbus line or endpoint. One actor owns it; RTU lines carry one request at a time."""

    id: Annotated[str, Id] = Field(description="line id; devices name it in line")
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = Field(
        description="tcp: Modbus TCP; rtu: a serial line; rtu_over_tcp: RTU frames through a TCP gateway"
    )
    host: str | None = Field(default=None, description="address of the device or gateway (tcp, rtu_over_tcp)")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="TCP port (tcp, rtu_over_tcp), e.g. 502"
    )
    device: str | None = Field(default=None, description="serial port for rtu, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600, description="serial speed in bit/s (rtu)")
    parity: Literal["N", "E", "O"] = Field(default="N", description="serial parity: none, even, odd (rtu)")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits per character (rtu)")
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits per character (rtu)")
    timeout: Duration = Field(default=1.0, gt=0, description="per request")
    retries: int = Field(default=0, ge=0, le=5, description="extra attempts of a failed request")
    inter_request_delay: Duration = Field(default=0.0, description="pause between requests on this line")
    max_connections: int = Field(default=1, ge=1, le=32, description="TCP only: parallel connections allowed")
    client: Literal["builtin", "pymodbus"] = Field(
        default="builtin",
        description="tcp only: the Modbus TCP client; builtin: the gateway's own (fast), pymodbus: the"
        " reference, as a fallback. RTU and rtu_over_tcp lines always use pymodbus",
    )
    pipeline: int = Field(
        default=1,
        ge=1,
        le=16,
        description="tcp with the builtin client only: requests outstanding per connection; 1 (one at a"
        " time) unless the device is known to queue requests (most meters and serial gateways do not). With"
        " 2 or more, a device's cycle sends up to that many of its reads in one write (an SDM630's 3 reads"
        " with 3: 16-40 % less CPU per request in `make bench` runs)",
    )
    down_after: int = Field(
        default=3, ge=1, le=100, description="failed cycles before a device is marked down"
    )
    backoff_max: Duration = Field(
        default=300.0, gt=0, description="cap of the re-probe backoff of a down device"
    )
    powered_by: str | None = Field(default=None, description="supply domain powering the converter/gateway")

    @model_validator(mode="after")
    def _endpoint(self) -> Line:
        if self.transport in ("tcp", "rtu_over_tcp"):
            if not self.host or self.port is None:
                raise ValueError(f"a {self.transport} line needs host and port")
        elif not self.device:
            raise ValueError("an rtu line needs device (the serial port, e.g. /dev/ttyUSB0)")
        if self.transport != "tcp" and self.max_connections != 1:
            raise ValueError(
                "max_connections applies to tcp lines only: an RTU line carries one request at a time"
            )
        if self.transport != "tcp" and "client" in self.model_fields_set and self.client != "pymodbus":
            raise ValueError(
                f"client: {self.client} reads Modbus TCP only; a {self.transport} line is always read"
                " through pymodbus (leave client out)"
            )
        if self.pipeline != 1 and (self.transport != "tcp" or self.client != "builtin"):
            raise ValueError(
                "pipeline applies to tcp lines read by the builtin client only"
                f" (this line: transport {self.transport}, client {self.client})"
            )
        return self
