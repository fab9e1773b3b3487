"""A gateway with a fleet section in a process of its own, for the SIGKILL test (tests/gateway/fleet/
test_last_will.py): `python -m tests.gateway.fleet.child SITE STATE_DIR` runs the daemon and its fleet
publisher until it is killed."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from gateway.config import load_site
from tests.gateway.fleet.conftest import FleetDaemon


def main() -> None:
    site = load_site(Path(sys.argv[1]))
    FleetDaemon(site, Path(sys.argv[2])).start()
    print("started", flush=True)
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main()
