"""Service fixtures this folder's tests start: sim (tests/fixtures/)."""

from tests.fixtures.sim import sim, sim_live, sim_site_file  # noqa: F401
