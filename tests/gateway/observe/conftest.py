"""Service fixtures this folder's tests start: mosquitto, prometheus, sim, victoria (tests/fixtures/)."""

from tests.fixtures.mosquitto import mosquitto, mosquitto_tls, mosquitto_with_users, publisher  # noqa: F401
from tests.fixtures.prometheus import prometheus  # noqa: F401
from tests.fixtures.sim import sim, sim_live, sim_site_file  # noqa: F401
from tests.fixtures.victoria import victoria  # noqa: F401
