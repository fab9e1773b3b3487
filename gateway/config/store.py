"""Site-file sections of the store: `influx:` and `spool:`.

Both are optional. A site without `influx:` still collects: samples feed the rules and the metrics
and are not stored (the daemon says so in its log at start).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config.base import Strict
from gateway.core.durations import Duration


class InfluxConfig(Strict):
    """An InfluxDB v2 write endpoint (InfluxDB 2.x/3.x, VictoriaMetrics, anything speaking /api/v2/write)."""

    url: str = Field(
        description="the server's base URL, without a path (the client adds /api/v2/write), "
        "e.g. http://localhost:8086"
    )
    org: str = Field(default="meterwatch", description="organisation (ignored by VictoriaMetrics)")
    bucket: str = Field(default="meterwatch", description="bucket (ignored by VictoriaMetrics)")
    token: SecretStr | None = Field(default=None, description="API token; write it as ${INFLUX_TOKEN}")
    batch_size: int = Field(default=1000, ge=1, le=50_000, description="points per write request")
    flush_interval: Duration = Field(default=1.0, gt=0, le=60, description="longest wait to fill a batch")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="per write request")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        parts = urllib.parse.urlsplit(v)
        if parts.path.strip("/") or parts.query or parts.fragment:
            # the client appends /api/v2/write to the URL: a path here makes every write miss the
            # endpoint, and a server may answer that as bad points (400) rather than as a wrong URL
            host = parts.netloc.rpartition("@")[2]  # never echo credentials
            raise ValueError(
                f"expected the server's base URL without a path: write {parts.scheme}://{host} "
                "(the client adds /api/v2/write itself)"
            )
        return v.rstrip("/")


class SpoolConfig(Strict):
    """The durable buffer in front of InfluxDB (see gateway/sink/spool.py for the guarantees)."""

    path: Path | None = Field(default=None, description="SQLite file; default <state_dir>/spool.sqlite")
    mode: Literal["durable", "best_effort"] = Field(
        default="durable",
        description="durable: a sample is acknowledged once it is in the spool (survives kill -9 and power "
        "loss); best_effort: kept in memory until written, lost on a crash",
    )
    max_bytes: int = Field(
        default=512 * 1024 * 1024, ge=4096, description="bound on spooled line-protocol bytes; oldest dropped"
    )
    max_age: Duration = Field(default=7 * 86400.0, gt=0, description="older spooled points are dropped")
    replay_rate: float = Field(
        default=5000.0, gt=0, description="points per second sent to InfluxDB while draining a backlog"
    )
