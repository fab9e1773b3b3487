"""Helpers shared by tests in every folder: where the repository is, a free port, waiting on a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from simulators.ports import free_port as free_port  # the one home of free_port (bench uses it too)

REPO = Path(__file__).resolve().parents[1]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns a truthy value; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], T], timeout: float = 10.0, what: str = "", every: float = 0.02
) -> T:
    """The async twin of wait_until: poll without blocking the event loop; returns the truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(every)
