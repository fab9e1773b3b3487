"""An asyncio service on its own event loop in a daemon thread, for synchronous tests, tools and benches.

A subclass says how to start (`setup`, which may fail: the error is raised from `start()` in the caller's
thread) and how to stop (`teardown`); the thread then waits for `stop()`.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Self


class LoopThread:
    thread_name = "loop-thread"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def setup(self) -> None:
        """Start the service on the thread's loop."""

    async def body(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (by default: just wait for it)."""
        await stop.wait()

    async def teardown(self) -> None:
        """Stop what `setup` started."""

    def start(self, timeout: float = 10.0) -> Self:
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.thread_name} did not start within {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.setup()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self.body(self._stop)
        finally:
            await self.teardown()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
