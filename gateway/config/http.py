"""The `http:` section: where the daemon's one HTTP server listens."""

from __future__ import annotations

from pydantic import Field

from gateway.config.base import Strict


class HttpConfig(Strict):
    """The daemon's one HTTP server: /metrics, /healthz, /readyz and the routers other parts add."""

    host: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(default=9464, ge=0, le=65535, description="0 picks a free port (tests)")
    enabled: bool = Field(default=True, description="false: no HTTP server (no /metrics, no /api)")
