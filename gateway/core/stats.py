"""Plain counters the sources keep on their hot path; the metrics module reads them at scrape time.

Sources never import prometheus_client: they bump these fields and the gateway exposes them.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

RTT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = RTT_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs ending with +Inf, as Prometheus wants them."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class DeviceStats:
    """One polled (Modbus) or subscribed (MQTT) device."""

    device: str
    line: str
    requests: int = 0
    # kind -> count; kinds: "timeout", "connection", "crc", "framing", "exception_<code>", "decode", "nan",
    # "not_available", and answers dropped as not answering the request (drivers/modbus/answer.py):
    # "stale", "wrong_function", "wrong_unit" ("framing" too: a byte count that does not fit the read)
    errors: Counter[str] = field(default_factory=Counter)
    rtt: Histogram = field(default_factory=Histogram)
    up: bool = True
    last_success: float | None = None
    cycles: int = 0
    skipped_cycles: int = 0  # a cycle that overran its interval and was skipped, not queued
    samples: int = 0


@dataclass
class LineStats:
    """One Modbus line (a serial port, a TCP endpoint or an RTU-over-TCP gateway)."""

    line: str
    transport: str
    connected: bool = False
    reconnects: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_cycle_seconds: float = 0.0


@dataclass
class MqttStats:
    source: str = "mqtt"
    connected: bool = False
    reconnects: int = 0
    messages: int = 0
    # cause -> count (drivers/mqtt/errors.py): whole messages ("json", "unknown_device", "unknown_topic",
    # "too_large", "too_deep") and dropped fields ("nan", "no_value", "type", "bad_quantity",
    # "too_many_values", "too_many_phases", "too_many_quantities")
    decode_errors: Counter[str] = field(default_factory=Counter)
    last_message: float | None = None
    # disconnects because another client took our session (same client id): drivers/mqtt/takeover.py
    takeovers: int = 0
