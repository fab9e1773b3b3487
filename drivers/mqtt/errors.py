"""Why an MQTT message was skipped. Each error names its cause (the stats/log key) and says what was expected.

The subscriber counts every error under `cause` in MqttStats.decode_errors and logs it once per cause.
The bounds (too_large, too_deep, too_many_phases, too_many_values, bad_quantity, too_many_quantities) keep a
hostile or broken publisher from costing the event loop more than one bounded payload's work: each is
counted once per message (too_many_phases once per field), and its message says how much was dropped.
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


class TooLarge(MessageError):
    """The payload is over max_payload bytes: dropped before any parsing."""

    cause = "too_large"


class TooDeep(MessageError):
    """JSON nested deeper than the limit (or too deep for the JSON parser itself)."""

    cause = "too_deep"


class TooManyPhases(MessageError):
    """A phase array longer than 3: the first 3 are kept."""

    cause = "too_many_phases"


class TooManyValues(MessageError):
    """More than max_values readings in one message: the first max_values are kept."""

    cause = "too_many_values"


class BadQuantity(MessageError):
    """A quantity name from a payload or a topic that is not [a-z][a-z0-9_]{0,63}, or is reserved."""

    cause = "bad_quantity"


class TooManyQuantities(MessageError):
    """A new quantity for a device that already has max_quantities distinct ones."""

    cause = "too_many_quantities"


def short(raw: object, limit: int = 60) -> str:
    """repr(raw), cut to `limit` characters: payloads and topics reach messages and logs only this way."""
    if isinstance(raw, str | bytes) and len(raw) > limit:
        return repr(raw[:limit])[: limit - 3] + "..."  # never repr a whole megabyte to keep 60 characters
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 3] + "..."
