"""The `notify:` section: where notices go (apprise URLs per audience) and when (the residents' policy).

A channel is one apprise URL with the audiences it serves. Secrets in URLs are written as ${ENV} in the
site file and never printed: the URL is a secret string, shown only in apprise's privacy form.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from gateway.config.base import Id, Strict
from gateway.core.durations import Duration

# Who a notice is for. residents:<building id> is the residents of one building; plain `residents` all.
AUDIENCES = (
    "staff",
    "oncall",
    "backup",
    "supervisor",
    "manager",
    "utility:water",
    "utility:power",
    "residents",
)
_AUDIENCE = re.compile(r"^(staff|oncall|backup|supervisor|manager|utility:water|utility:power|residents)$")
_RESIDENTS_OF = re.compile(r"^residents:[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PERSON = re.compile(r"^person:[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

Language = Literal["zh", "en"]


def audience_problem(text: str) -> str | None:
    """What is wrong with an audience name, or None."""
    if _AUDIENCE.match(text) or _RESIDENTS_OF.match(text) or _PERSON.match(text):
        return None
    return (
        f"unknown audience {text!r}; expected one of {', '.join(AUDIENCES)}, residents:<building id> "
        "or person:<oncall.people id>"
    )


class Channel(Strict):
    """One apprise URL and the audiences whose notices it carries."""

    name: Annotated[str, Id] = Field(description="short name used in logs, metrics and the delivery log")
    url: SecretStr = Field(
        description="apprise URL, e.g. wecombot://${WECOM_KEY}, mailto://..., json://host/path; "
        "secrets as ${ENV}"
    )
    audiences: list[str] = Field(
        min_length=1,
        description="who this channel reaches: staff, oncall, backup, supervisor, manager, utility:water, "
        "utility:power, residents, residents:<building id>, or person:<id> (one person of oncall.people: "
        "gets what is sent to a role while that person holds it)",
    )
    language: Language = Field(default="zh", description="language of the messages: zh (Chinese) or en")
    per_minute: int = Field(
        default=20,
        ge=1,
        le=600,
        description="most messages a minute (robots accept about 20); a burst above it goes out as one "
        "digest",
    )

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, v: list[str]) -> list[str]:
        problems = [p for a in v if (p := audience_problem(a))]
        if problems:
            raise ValueError("; ".join(problems))
        return v


class QuietHours(Strict):
    """Local hours (site time zone) when non-urgent notices wait for the morning digest."""

    start: str = Field(default="22:00", description="HH:MM, local time")
    end: str = Field(default="07:00", description="HH:MM, local time (may be the next day)")

    @model_validator(mode="after")
    def _clock(self) -> QuietHours:
        for name in ("start", "end"):
            if not _CLOCK.match(getattr(self, name)):
                raise ValueError(f"{name}: expected HH:MM, got {getattr(self, name)!r}")
        return self


def _local_datetime(value: object) -> datetime:
    """A wall-clock time of the site (no offset): YAML may already have made it a datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"expected a local date and time such as 2026-05-10T09:00, got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a local date and time such as 2026-05-10T09:00, got {value!r}")
    if value.tzinfo is not None:
        raise ValueError(
            f"expected the site's local time without an offset (the site's time zone applies), got {value}"
        )
    return value


LocalDateTime = Annotated[datetime, BeforeValidator(_local_datetime)]

# What planned works cut, unless a window says otherwise.
MAINTENANCE_CATEGORIES = ("power_outage", "water_supply")


class MaintenanceWindow(Strict):
    """Planned works: outages they cause owe residents and the utility no outage notice; residents get an
    advance notice instead."""

    id: Annotated[str, Id] = Field(description="window id; names its notices (maintenance:<id>/...)")
    start: LocalDateTime = Field(
        description="when the works begin: local date and time in the site time zone, e.g. 2026-05-10T09:00"
    )
    end: LocalDateTime = Field(
        description="when the works end, same form; an outage still on after it is reported as unplanned"
    )
    buildings: list[str] = Field(
        default_factory=list, description="building ids the works affect; empty: every building"
    )
    categories: list[str] = Field(
        default_factory=lambda: list(MAINTENANCE_CATEGORIES),
        min_length=1,
        description="incident categories the works explain; default power_outage and water_supply",
    )
    notice_before: Duration = Field(
        default=86400.0, ge=0, description="residents get the advance notice this long before the start"
    )
    note: str = Field(default="", description="what the works are, in words, for the advance notice")

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        return self


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Links(Strict):
    """The signed, expiring links of the dispatch message ('acknowledge', 'on site')."""

    base_url: str | None = Field(
        default=None,
        description="the gateway's address as staff phones reach it, e.g. https://gw.example.org; the links "
        "are <base_url>/ack/<token> and <base_url>/on-site/<token>; unset: no links can be made",
    )
    ttl: Duration = Field(default=86400.0, gt=0, description="how long a link stays valid after it is sent")
    vote_ttl: Duration = Field(
        default=7 * 86400.0,
        gt=0,
        description="how long the rating link of the residents' all-clear (<base_url>/r/<token>) stays valid",
    )
    secret_env: str = Field(
        default="MW_LINK_SECRET",
        pattern=_ENV_NAME.pattern,
        description="environment variable holding the signing secret (at least 32 characters); unset: a "
        "secret is generated once into <state_dir>/link-secret",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
            bad_port = False
        except ValueError:
            bad_port = True
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or bad_port
            or parts.username is not None
            or parts.query
            or parts.fragment
            or any(c.isspace() for c in v)
        ):
            raise ValueError(
                f"expected an http:// or https:// address without user, query or fragment, e.g. "
                f"https://gw.example.org, got {v!r}"
            )
        return v.rstrip("/")


class NotifyConfig(Strict):
    """Notices to residents, staff and utilities; who gets what and when."""

    channels: list[Channel] = Field(default_factory=list, description="the apprise channels")
    hotline: str = Field(default="", description="the 24-hour hotline number every residents' notice carries")
    templates_dir: Path | None = Field(
        default=None,
        description="folder of templates overriding the shipped ones (<language>/<stage>.j2), relative to "
        "the site file",
    )
    confirm_delay: dict[str, Duration] = Field(
        default_factory=lambda: {"power_outage": 180.0, "water_supply": 300.0},
        description="category -> how long an outage must last before residents hear of it",
    )
    update_every: Duration = Field(
        default=3600.0, gt=0, description="residents get at most one update this often (or on a new ETA)"
    )
    verify_for: Duration = Field(
        default=600.0, ge=0, description="supply back and stable this long before the residents' all-clear"
    )
    quiet_hours: QuietHours | None = Field(
        default=None, description="hours when non-urgent notices wait for a morning digest; none by default"
    )
    retry_max: Duration = Field(
        default=300.0, gt=0, description="longest wait between two attempts of a failed target"
    )
    channel_failing_after: Duration = Field(
        default=600.0,
        gt=0,
        description="a channel failing this long raises a staff incident through the other channels",
    )
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list,
        description="planned maintenance windows: no outage notice for what they cut, an advance notice "
        "to residents instead",
    )
    links: Links = Field(
        default_factory=Links,
        description="the 'acknowledge' and 'on site' links of the dispatch message: address, lifetime, "
        "secret",
    )

    @model_validator(mode="after")
    def _unique(self) -> NotifyConfig:
        names = [c.name for c in self.channels]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate channel name(s): {', '.join(dup)}")
        ids = [w.id for w in self.maintenance]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate maintenance window id(s): {', '.join(dup)}")
        return self
