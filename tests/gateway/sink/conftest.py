"""Service fixtures this folder's tests start: victoria (tests/fixtures/)."""

from tests.fixtures.victoria import victoria  # noqa: F401
