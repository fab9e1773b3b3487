"""A subprocess whose output lines are collected by reader threads, so tests can wait on what it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pytest


class Watched:
    """`python -m <module> <args>` with stdout and stderr collected line by line (both kept separately)."""

    def __init__(self, module: str, args: Sequence[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    def lines(self, which: str = "both") -> list[str]:
        with self._lock:
            if which == "out":
                return list(self.out)
            if which == "err":
                return list(self.err)
            return [*self.out, *self.err]

    def wait_for(
        self, predicate: Callable[[list[str]], bool], timeout: float, what: str, which: str = "both"
    ) -> float:
        """Poll until `predicate(lines)` holds; returns when (monotonic). Fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.lines(which)):
                return time.monotonic()
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers drain the pipes
                if predicate(self.lines(which)):
                    return time.monotonic()
                pytest.fail(f"process exited ({self.proc.returncode}) before {what}\n{self.dump()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}\n{self.dump()}")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code (and for the readers to drain the pipes)."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=5)
        return code

    def dump(self) -> str:
        return (
            "--- stdout\n"
            + "\n".join(self.lines("out")[-60:])
            + "\n--- stderr\n"
            + "\n".join(self.lines("err")[-60:])
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
