"""The `http:` section: where the daemon's one HTTP server listens, and who may change things through it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.base import Id, Strict

MIN_TOKEN = 16  # characters: a guessable token is no access control


class ApiToken(Strict):
    """A named bearer token for the write endpoints and the staff console. The name is who the timeline
    says acted (e.g. `desk`, `wang-phone`); the token itself comes from the environment."""

    name: Annotated[str, Id] = Field(description="who acts with this token, as the timeline records it")
    token: SecretStr = Field(
        description="the bearer token, at least 16 characters; write it as ${ENV}, never in the file"
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        n = len(v.get_secret_value())
        if n < MIN_TOKEN:
            raise ValueError(f"a token needs at least {MIN_TOKEN} characters, this one has {n}")
        return v


class HttpConfig(Strict):
    """The daemon's one HTTP server: /metrics, /healthz, /readyz, the API, the staff console and pages."""

    host: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(default=9464, ge=0, le=65535, description="0 picks a free port (tests)")
    enabled: bool = Field(default=True, description="false: no HTTP server (no /metrics, no /api)")
    metrics_detail: Literal["device", "line"] = Field(
        default="device",
        description="device: every per-device series on /metrics (about 30 lines a device); line: per "
        "device only up, last success, skipped cycles and info, with requests, errors by kind, round-trip "
        "times, poll cycles and samples summed per line (and per source for MQTT) under the same metric "
        "names without the device label. The deploy kit's alerts and dashboards work with both (in line mode "
        "the 'devices with errors' panel shows one unlabelled sum); use line from several hundred devices on "
        "shared lines (RS485 buses, gateways), where /metrics would otherwise be megabytes",
    )
    tokens: list[ApiToken] = Field(
        default_factory=list,
        description="named bearer tokens for the write endpoints (POST /api/...) and the staff console; "
        "none: nothing can be changed over HTTP",
    )

    @model_validator(mode="after")
    def _unique(self) -> HttpConfig:
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate token name(s): {', '.join(dup)}")
        values = [t.token.get_secret_value() for t in self.tokens]
        if len(set(values)) != len(values):
            raise ValueError("two tokens have the same value: each name needs its own token")
        return self
