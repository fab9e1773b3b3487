"""Service fixtures this folder's tests start: mosquitto (tests/fixtures/)."""

from tests.fixtures.mosquitto import (  # noqa: F401
    mosquitto,
    mosquitto_deep_queue,
    mosquitto_tls,
    mosquitto_with_users,
    publisher,
)
