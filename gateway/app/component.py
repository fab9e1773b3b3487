"""What the daemon runs: anything with a name and a `run(stop)` coroutine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol


class Component(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then return after a clean shutdown."""


def state_file(site_dir: Path, state_dir: Path, configured: Path | None, default_name: str) -> Path:
    """A file the site file may place: relative paths are read from the site file's folder."""
    if configured is None:
        return state_dir / default_name
    return configured if configured.is_absolute() else site_dir / configured
