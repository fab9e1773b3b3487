"""Service fixtures this folder's tests start: an HTTP receiver standing in for the notice channels."""

from tests.fixtures.receiver import receiver, receiver_factory  # noqa: F401
