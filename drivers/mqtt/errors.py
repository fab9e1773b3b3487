"""Why an MQTT message was skipped. Each error names its cause (the stats/log key) and says what was expected.

The subscriber counts every error under `cause` in MqttStats.decode_errors and logs it once per cause.
"""

from __future__ import annotations


class MessageError(Exception):
    """A message that cannot become (all of) a Sample. `cause` is a short, stable counter key."""

    cause = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedJson(MessageError):
    cause = "json"


class NotFinite(MessageError):
    cause = "nan"


class MissingField(MessageError):
    cause = "no_value"


class NotANumber(MessageError):
    cause = "type"


class BadTimestamp(MessageError):
    cause = "time"


class UnknownQuantity(MessageError):
    cause = "unknown_quantity"


class UnknownDevice(MessageError):
    cause = "unknown_device"


class UnknownTopic(MessageError):
    cause = "unknown_topic"
