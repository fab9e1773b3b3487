"""Service fixtures this folder's tests start: mosquitto (tests/fixtures/)."""

from tests.fixtures.mosquitto import mosquitto, mosquitto_tls, mosquitto_with_users, publisher  # noqa: F401
