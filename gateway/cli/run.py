"""`meterwatch run`: the gateway daemon.

One daemon per state dir: two on the same spool and incident store would each take the other's rows for
their own. The first holds an exclusive flock on `<state dir>/run.lock` (with its PID in it) for as long as
its process lives, so a crash or kill -9 lets go of it too; a second refuses to start, naming that PID.
Errors that stop the start (a state dir that cannot be written, a spool that cannot be opened) are one
line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import typer

from gateway.cli.common import SiteArg, load_or_exit

LOCK_NAME = "run.lock"


class RunLockError(Exception):
    """The state dir is taken by another daemon or cannot be written: one line."""


def hold_state_dir(state: Path) -> int:
    """Create the state dir and lock it for this process; returns the lock's descriptor, to keep open."""
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)  # the daemon's state is its owner's alone
        fd = os.open(state / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RunLockError(
            f"cannot write in the state dir {state} ({exc.strerror}): the spool, the incident store and "
            "the run lock live there; make it writable or give another --state-dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RunLockError(
            f"another meterwatch run (PID {pid}) uses the state dir {state} (lock {state / LOCK_NAME}); "
            "stop it first or give another --state-dir"
        ) from None
    # On a full disk the PID cannot be written; the lock holds all the same.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def run(
    site_file: Path = SiteArg,
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
    state_dir: Path | None = typer.Option(
        None, help="where the spool, dead letters and incident store live; default var/<site id>"
    ),
    tap: Path | None = typer.Option(
        None, help="debug: append every polled sample to this JSON-lines file (slows sources if the disk is)"
    ),
) -> None:
    """Run the gateway daemon until SIGTERM or SIGINT."""
    site = load_or_exit(site_file)
    from gateway.app.daemon import default_state_dir, run_daemon
    from gateway.incidents.store import StoreError
    from gateway.observe.logs import setup_logging
    from gateway.sink.storage_errors import SpoolOpenError

    setup_logging(log_level)
    state = state_dir or default_state_dir(site)
    try:
        lock = hold_state_dir(state)
    except RunLockError as exc:
        typer.echo(f"meterwatch run: {exc}", err=True)
        raise typer.Exit(1) from None
    from gateway.cli.broker import warn_if_no_broker

    warn_if_no_broker(site)  # one clear line; the daemon starts all the same and Modbus goes on
    try:
        code = run_daemon(site, state_dir=state, tap=tap)
    except (StoreError, SpoolOpenError) as exc:  # a store we cannot use: say which, stop before collecting
        typer.echo(f"meterwatch run: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a file the start needs cannot be made (a read-only or full disk)
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"meterwatch run: {where}{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        os.close(lock)
    raise typer.Exit(code)
