"""Polling a condition until it holds, for the benches (tests have tests/helpers.wait_until)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    alive: Callable[[], bool] | None = None,
) -> T:
    """Poll `predicate` until it returns a truthy value and return that value. Raises TimeoutError after
    `timeout` seconds, and RuntimeError as soon as `alive` (the process we wait on) says it exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive():
            raise RuntimeError(f"gave up waiting for {what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
