"""Service fixtures this folder's tests start: an HTTP receiver, an SMTP server (tests/fixtures/)."""

from tests.fixtures.receiver import receiver, receiver_factory  # noqa: F401
from tests.fixtures.smtp import smtp_server  # noqa: F401
