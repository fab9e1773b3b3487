"""The sending half of the outbox: one worker thread per channel renders due rows and sends them with apprise.

Why a thread per channel: apprise blocks (HTTP, SMTP) and sleeps between two sends to the same service
object (5.5 s for WeCom, DingTalk, Feishu, e-mail; 0 for json://), so a slow or throttled channel must not
hold up another's rows.

Targets and per-target retry. What apprise reports on is a *service*: one apprise URL. A channel's URL may
hold several (comma or space separated; apprise splits them); each becomes one target, added to one
`apprise.Apprise` with its own tag (`target0`, `target1`, ...), so a retry calls `notify(tag=[the failed
targets' tags])` and reaches only those. Each target is named by apprise's privacy form of its URL without
the query (see outbox_api), and every round records one Delivery per target tried. A target that succeeded
is never sent the notice again.

What apprise cannot do: one URL that names several recipients (mailto://...?to=a@x,b@x, wechat://.../@a/@b,
smsgw://...?to=138...,139...) is one service and gets one status: apprise does not say which recipient
failed, and has no call that sends one URL to some of its recipients only (its `?retry=` re-sends within one
call skip recipients that already took it, but that memory ends with the call). So such a URL is one
target: when it fails it is retried as a whole, and recipients of it that did get the message may get it
again. A site that wants exactly once per recipient writes one URL per recipient, comma separated, in the
channel's url.

Rate limit and digest. Each channel has a token bucket of `per_minute` messages (full at start, refilled
continuously). When the due rows do not exceed the tokens, each goes as its own message. When they do, the
oldest rows go one by one with all tokens but one per target group, and the rest of each group go as ONE
digest message (Stage.DIGEST, context {"items": [{"title", "body"}, ...]}, at most `digest_max` items;
more wait for the next token). A target group is the rows owed to the same targets (a retry owed only to
the targets that failed is never merged with a notice owed to all of them, so a digest never repeats a
notice to a target that has it). Each merged row is recorded as sent (or not) through the digest, with
the detail "digest of N".

Quiet hours' morning digest. The policy holds non-urgent notices during quiet hours: such a row is due at the
quiet hours' end and its context has `held_until_local`. The held rows a channel finds due when it looks (they
come due together, at the same end) go as ONE digest per target group (same template; at most `digest_max`
each, more make a second digest), one token each, recorded per row with the detail "quiet-hours digest of N";
rows that were never held go one by one as above. A digest whose target failed leaves its rows owed to that
target only, due together again: the retry is again one digest, to that target only. A held row alone goes as
a message of its own.

Idempotency key on the wire. Every message to a json://, form:// or xml:// target (and their s-forms)
carries the HTTP header `X-Meterwatch-Key: <the outbox row's key>` (incident:3/staff_open/staff/staff;
a digest lists the keys of its rows, ", " separated; characters outside letters, digits and -._~:/@=+
are percent-encoded; a list longer than KEY_HEADER_MAX is sent as `sha256:<hex>` of it); an e-mail
(mailto://, mailtos://) carries it as a header of the mail. It is what those URLs' `+Header=value`
argument does, set on the service for the one call. A resend (a retry, or a restart after a crash)
carries the same key, so a receiver that dedupes by it can make a repeat harmless. Robots and other
schemes (wecombot://, wechat://, dingtalk://, feishu://, lark://, an SMS gateway plugin, ...) have no way
to carry a header of ours: a repeat reaches their people as a second message.

Exactly once is what the outbox gives between the incident and the row; between apprise and the record of its
result there is a window in which a notice can go twice: from the moment the request reaches the target to the
moment its result is committed (a crash while the target has not answered yet, or after apprise returned and
before the record; also a stop whose process exits before the answer came). The row is then still owed and
goes again after the restart, to every target it was owed to; at most the one message in flight per channel is
repeated (a worker sends one message at a time), never a row that was merely due. A result is recorded right
after its send; one the outbox refuses (locked, disk full) is kept and recorded again before anything else is
sent, so the row does not go out again meanwhile.

Stopping: the thread checks a stop event between messages, and apprise's gap between two sends to the
same service is waited out here, on that event, before apprise is called (so apprise's own sleep is ~0).
An HTTP or SMTP exchange in flight cannot be cut short; `Sender.stop(timeout)` says which channels were
still in one (their daemon threads record the result and end).

Failing: `failing_since` is the time of the first target that failed with no round in which every target
tried succeeded since; `failing` is set once that is older than notify.channel_failing_after (the daemon
raises the staff incident). A template error is not the channel's failure.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import apprise
from apprise.plugins.custom_form import NotifyForm
from apprise.plugins.custom_json import NotifyJSON
from apprise.plugins.custom_xml import NotifyXML
from apprise.plugins.email import NotifyEmail
from apprise.utils.parse import parse_urls

from gateway.config.notify import Channel, NotifyConfig
from gateway.respond.model import Delivery, DeliveryStatus, NoticeState, Stage
from gateway.respond.outbox_api import Outbox, OutboxRow

log = logging.getLogger(__name__)

# render(stage, language, context) -> (title, body); gateway/respond/messages.py provides the real one.
Render = Callable[[Stage, str, dict[str, Any]], tuple[str, str]]

DETAIL_MAX = 300  # characters of apprise's own log lines kept in a Delivery's detail
GONE = "no longer in the channel's URL"

# The header that carries the outbox rows' idempotency keys to targets that can take a header.
KEY_HEADER = "X-Meterwatch-Key"
# apprise's services whose URLs take `+Header=value` arguments: json(s)://, form(s)://, xml(s)://, and
# mailto(s):// (an e-mail header). Each keeps those headers in its `headers` dict and sends them with
# every request (every e-mail).
KEYED_SERVICES: tuple[type, ...] = (NotifyJSON, NotifyForm, NotifyXML, NotifyEmail)
# Characters a key keeps as they are in the header (besides letters, digits and -._~): what the outbox's
# keys are made of (incident:3/staff_open/residents:B1/b1-residents). Anything else is percent-encoded, so
# a key can never break the header (a comma, a line break, a character outside ASCII).
_KEY_SAFE = ":/@=+"
# Servers cap a header line (nginx 8 KB by default, some proxies 4 KB): a longer one would be refused
# with an error and the message retried for ever. 50 keys of ~60 characters fit.
KEY_HEADER_MAX = 3000

T = TypeVar("T")


@dataclass
class ChannelStats:
    """One channel's counters, read by /metrics at scrape time (plain fields, like gateway/core/stats)."""

    channel: str
    targets: int = 0  # apprise URLs the channel's url holds (that apprise accepts)
    invalid_urls: int = 0  # URLs in the channel's url that apprise refused (left out)
    notices: Counter[str] = field(default_factory=Counter)  # NoticeState value -> rows recorded in it
    deliveries: Counter[str] = field(default_factory=Counter)  # DeliveryStatus value -> target results
    messages: int = 0  # messages handed to apprise (a digest counts once)
    digests: int = 0
    digested_rows: int = 0  # rows that went out inside a digest
    render_errors: int = 0
    outbox_errors: int = 0  # due()/record() raised
    last_success: float | None = None  # epoch seconds of the last target that took a message
    failing_since: float | None = None  # first failed target result with no fully good round since
    failing: bool = False  # failing_since is older than notify.channel_failing_after


class TokenBucket:
    """`per_minute` tokens, full at start, refilled continuously; one token per message."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self) -> int:
        self._refill()
        return int(self.tokens)

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0

    def eta(self) -> float:
        """Seconds until a whole token is there."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


def plan_messages(
    items: Sequence[T], group: Callable[[T], Hashable], tokens: int, digest_max: int
) -> list[list[T]]:
    """Which of the due `items` (oldest first) go out now, and how: each inner list is one message, a list
    of one a message of its own, a longer list one digest. At most `tokens` messages; items left out wait.

    Every item goes alone when they fit. Otherwise the groups of the oldest items are served, one digest
    token each, as many groups as there are tokens; the tokens over one per served group go to the oldest
    items of those groups as messages of their own; what is left of a group is its digest (one item left:
    a message of its own), at most `digest_max` items, the rest waiting."""
    if tokens <= 0 or not items:
        return []
    if len(items) <= tokens:
        return [[it] for it in items]
    groups: dict[Hashable, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(group(it), []).append(i)
    served = list(groups.values())[:tokens]
    budget = tokens - len(served)
    alone = set(sorted(i for g in served for i in g)[:budget])
    out: list[tuple[int, list[int]]] = [(i, [i]) for i in sorted(alone)]
    for g in served:
        rest = [i for i in g if i not in alone][: max(digest_max, 1)]
        if rest:
            out.append((rest[0], rest))
    out.sort(key=lambda m: m[0])
    return [[items[i] for i in m] for _, m in out]


def held_units(
    items: Sequence[T], held: Callable[[T], bool], group: Callable[[T], Hashable], digest_max: int
) -> list[list[T]]:
    """The due `items` (oldest first) as units of sending: the held items of one group together, in
    chunks of at most `digest_max` (each chunk one digest), every other item alone. Units are ordered by
    their oldest item. plan_messages then spends one token per unit while the tokens last."""
    size = max(digest_max, 1)
    units: list[list[T]] = []
    open_unit: dict[Hashable, list[T]] = {}  # the held unit of each group still taking items
    for it in items:
        if not held(it):
            units.append([it])
            continue
        g = group(it)
        unit = open_unit.get(g)
        if unit is None or len(unit) >= size:
            unit = open_unit[g] = []
            units.append(unit)
        unit.append(it)
    return units


def key_header(keys: Sequence[str]) -> str:
    """The X-Meterwatch-Key value of a message carrying the outbox rows `keys`: each key percent-encoded
    outside letters, digits and -._~:/@=+, joined by ", " (HTTP's list syntax: a digest carries all).
    Past KEY_HEADER_MAX characters (a digest of many long keys) the value is `sha256:<32 hex>` of that
    list instead: still the same for a resend of the same message, and no server refuses the header."""
    value = ", ".join(quote(k, safe=_KEY_SAFE, errors="backslashreplace") for k in keys)
    if len(value) <= KEY_HEADER_MAX:
        return value
    return "sha256:" + hashlib.sha256(value.encode("ascii")).hexdigest()[:32]


def is_held(row: OutboxRow) -> bool:
    """Whether quiet hours held the notice (the policy marks it with the local time it was held until)."""
    return isinstance(row.context, dict) and bool(row.context.get("held_until_local"))


def carries_key(service: Any) -> bool:
    """Whether an apprise service can take the key header: json/form/xml, e-mail (robots cannot)."""
    return isinstance(service, KEYED_SERVICES) and isinstance(getattr(service, "headers", None), dict)


@dataclass(frozen=True, slots=True)
class _Target:
    name: str  # privacy form, the name the outbox and the delivery log keep
    tag: str  # our tag on its apprise service: notify(tag=[...]) reaches only these
    service: Any  # the apprise NotifyBase (its throttle clock is read before a send)
    keyed: bool = False  # it takes the X-Meterwatch-Key header (carries_key)


@dataclass(frozen=True, slots=True)
class _Ready:
    row: OutboxRow
    targets: tuple[_Target, ...]  # the targets this row is owed to now
    gone: tuple[str, ...]  # targets it was owed to that the channel no longer has
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class _Pending:
    """A record() the outbox refused (locked, full disk), kept until it takes it."""

    key: str
    deliveries: list[Delivery]
    state: NoticeState
    failed: list[str]
    next_attempt_at: float | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: DeliveryStatus
    attempts: int  # apprise's attempts this round (its own ?retry= counts)
    detail: str


def _status(value: apprise.AppriseResultStatus) -> DeliveryStatus:
    if value == apprise.AppriseResultStatus.SUCCESS:
        return DeliveryStatus.SUCCESS
    if value == apprise.AppriseResultStatus.TIMEOUT:
        return DeliveryStatus.TIMEOUT
    return DeliveryStatus.FAILURE


def _detail(entries: Any) -> str:
    text = " | ".join(str(e.message) for e in entries)
    return text if len(text) <= DETAIL_MAX else "..." + text[-DETAIL_MAX:]


def target_name(service: Any) -> str:
    """apprise's privacy form of a service's URL without the query (options, never targets or secrets)."""
    return str(service.url(privacy=True)).split("?", 1)[0]


@contextmanager
def _key_header(targets: Sequence[_Target], keys: Sequence[str]) -> Iterator[None]:
    """Put the X-Meterwatch-Key header on the keyed targets' services for one notify() call, as their
    `+X-Meterwatch-Key=...` URL argument would, and take it off after: the services are this worker's own
    (one thread), so no other message sees it. A header of the same name in the URL is put back after."""
    keyed = [t for t in targets if t.keyed]
    value = key_header(keys)
    saved: list[tuple[dict[str, Any], str | None]] = []
    for t in keyed:
        headers: dict[str, Any] = t.service.headers
        saved.append((headers, headers.get(KEY_HEADER)))
        headers[KEY_HEADER] = value
    try:
        yield
    finally:
        for headers, before in saved:
            if before is None:
                headers.pop(KEY_HEADER, None)
            else:
                headers[KEY_HEADER] = before


class ChannelWorker:
    """One channel: a thread that polls the outbox for due rows, renders, rate-limits, sends, records."""

    def __init__(
        self,
        channel: Channel,
        outbox: Outbox,
        render: Render,
        *,
        retry_max: float = 300.0,
        failing_after: float = 600.0,
        retry_base: float = 1.0,
        poll_interval: float = 1.0,
        batch_limit: int = 100,
        digest_max: int = 50,
        send_timeout: float = 120.0,
        asset: apprise.AppriseAsset | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel.name
        self.language = channel.language
        self.per_minute = channel.per_minute
        self._outbox = outbox
        self._render = render
        self.retry_max = retry_max
        self.failing_after = failing_after
        self.retry_base = retry_base
        self.poll_interval = poll_interval
        self.batch_limit = batch_limit
        self.digest_max = digest_max
        self.send_timeout = send_timeout
        self._clock = clock
        self.stats = ChannelStats(channel.name)
        self._bucket = TokenBucket(channel.per_minute)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._unrecorded: dict[str, _Pending] = {}
        self._apprise = apprise.Apprise(asset=asset) if asset is not None else apprise.Apprise()
        self.targets: list[_Target] = self._build(channel.url.get_secret_value())

    def _build(self, url: str) -> list[_Target]:
        targets: list[_Target] = []
        seen: Counter[str] = Counter()
        for i, one in enumerate(parse_urls(url)):
            tag = f"target{i}"
            if not self._apprise.add(one, tag=tag):
                scheme = one.partition("://")[0] if "://" in one else "?"
                log.error(
                    "channel %s: apprise does not accept URL #%d (%s://); left out",
                    self.channel,
                    i + 1,
                    scheme,
                )
                self.stats.invalid_urls += 1
                continue
            service = self._apprise[len(self._apprise) - 1]
            name = target_name(service)
            seen[name] += 1
            if seen[name] > 1:
                name = f"{name} #{seen[name]}"
            targets.append(_Target(name, tag, service, carries_key(service)))
        self.stats.targets = len(targets)
        return targets

    # -- life ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"channel {self.channel}: worker already started")
        self._thread = threading.Thread(target=self._run, name=f"notify:{self.channel}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows were committed: look now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to end; it does after the apprise call in flight, if any (see join)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a wake during the round makes the wait below return at once
            try:
                wait = self.run_once()
            except Exception:
                log.exception("channel %s: the outbox round failed", self.channel)
                self.stats.outbox_errors += 1
                wait = self.poll_interval
            self.update_failing(self._clock())
            if wait > 0:
                self._wake.wait(wait)

    def update_failing(self, now: float) -> bool:
        since = self.stats.failing_since
        self.stats.failing = since is not None and now - since >= self.failing_after
        return self.stats.failing

    # -- one round -----------------------------------------------------------------------------------------
    def run_once(self) -> float:
        """Look at the due rows once and send what the bucket allows. Returns how long to wait before the
        next round: 0 when rows were handled (more may be due), else until the poll or the next token."""
        if self._unrecorded and not self._flush_unrecorded():
            # The outbox cannot take records now: send nothing more until it can.
            return self.poll_interval
        now = self._clock()
        rows = self._outbox.due(self.channel, now, self.batch_limit)
        if not rows:
            return self.poll_interval
        ready: list[_Ready] = []
        handled = 0
        for row in rows:
            item = self._prepare(row, now)
            if item is None:
                handled += 1
            else:
                ready.append(item)
        if not ready:
            return 0.0 if handled else self.poll_interval

        def group(r: _Ready) -> Hashable:
            return tuple(t.tag for t in r.targets)

        # Notices quiet hours held come due together at their end: one unit (one digest) per target group.
        units = held_units(ready, lambda r: is_held(r.row), group, self.digest_max)
        plan = plan_messages(units, lambda u: group(u[0]), self._bucket.available(), self.digest_max)
        if not plan:
            return min(self.poll_interval, max(self._bucket.eta(), 0.01))
        for message in plan:
            if self._stop.is_set():
                break
            # Units merged by the rate limit may hold more rows than a digest takes: the rest wait.
            items = [r for unit in message for r in unit][: max(self.digest_max, 1)]
            morning = len(message) == 1 and len(items) > 1  # one held unit, not a rate-limit merge
            self._send(items, note=f"quiet-hours digest of {len(items)}" if morning else "")
        return 0.0

    def _prepare(self, row: OutboxRow, now: float) -> _Ready | None:
        """The row with its targets and rendered message, or None when it was recorded as FAILED here."""
        if row.failed_targets is None:
            targets = tuple(self.targets)
            gone: tuple[str, ...] = ()
        else:
            owed = set(row.failed_targets)
            targets = tuple(t for t in self.targets if t.name in owed)
            have = {t.name for t in self.targets}
            gone = tuple(n for n in row.failed_targets if n not in have)
        if not targets:
            names = gone or ("",)
            why = GONE if gone else "the channel has no URL apprise accepts"
            deliveries = [
                self._delivery(row, n, DeliveryStatus.FAILURE, row.attempts, now, why) for n in names
            ]
            self._record(row, deliveries, NoticeState.FAILED, list(row.failed_targets or []), None)
            return None
        try:
            title, body = self._render(row.stage, row.language, row.context)
            if not (title.strip() or body.strip()):
                raise ValueError("the message is empty")
        except Exception as e:
            log.warning("channel %s: %s could not be rendered: %s", self.channel, row.key, e)
            self.stats.render_errors += 1
            why = f"render failed: {type(e).__name__}: {e}"[:DETAIL_MAX]
            deliveries = [
                self._delivery(row, t.name, DeliveryStatus.FAILURE, row.attempts, now, why) for t in targets
            ]
            deliveries += [
                self._delivery(row, n, DeliveryStatus.FAILURE, row.attempts, now, GONE) for n in gone
            ]
            self._record(row, deliveries, NoticeState.FAILED, list(row.failed_targets or []), None)
            return None
        return _Ready(row, targets, gone, title, body)

    def _send(self, items: list[_Ready], note: str = "") -> None:
        """One message: `items` alone (one) or as a digest (several, all owed to the same targets)."""
        targets = items[0].targets
        if len(items) == 1:
            title, body = items[0].title, items[0].body
            note = ""
        else:
            title, body = self._digest(items)
            note = note or f"digest of {len(items)}"
        outcomes = self._notify(targets, title, body, [it.row.key for it in items])
        if outcomes is None:  # stopped while waiting for apprise's throttle: nothing sent, nothing recorded
            return
        self._bucket.take()
        now = self._clock()
        self.stats.messages += 1
        if len(items) > 1:
            self.stats.digests += 1
            self.stats.digested_rows += len(items)
        results = [outcomes[t.name].status for t in targets]
        if DeliveryStatus.SUCCESS in results:
            self.stats.last_success = now
        if all(s == DeliveryStatus.SUCCESS for s in results):
            self.stats.failing_since = None
        elif self.stats.failing_since is None:
            self.stats.failing_since = now
        for item in items:
            row = item.row
            deliveries: list[Delivery] = []
            for t in targets:
                o = outcomes[t.name]
                detail = "; ".join(x for x in (note, o.detail) if x)
                deliveries.append(
                    self._delivery(row, t.name, o.status, row.attempts + o.attempts, now, detail)
                )
            deliveries += [
                self._delivery(row, n, DeliveryStatus.FAILURE, row.attempts, now, GONE) for n in item.gone
            ]
            failed = [t.name for t in targets if outcomes[t.name].status != DeliveryStatus.SUCCESS]
            if not failed:
                self._record(row, deliveries, NoticeState.SENT, [], None)
                continue
            retry_at = now + self.backoff(row.attempts + 1)
            someone_has_it = row.failed_targets is not None or len(failed) < len(targets)
            if someone_has_it:
                self._record(row, deliveries, NoticeState.PARTIAL, failed, retry_at)
            else:  # nobody has it: owed to every target, as before
                self._record(row, deliveries, NoticeState.PENDING, [], retry_at)

    def backoff(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed round: retry_base, twice that, ... at most retry_max."""
        return float(min(self.retry_base * 2.0 ** min(max(attempts - 1, 0), 62), self.retry_max))

    def _digest(self, items: list[_Ready]) -> tuple[str, str]:
        context: dict[str, Any] = {"items": [{"title": it.title, "body": it.body} for it in items]}
        try:
            title, body = self._render(Stage.DIGEST, self.language, context)
            if title.strip() or body.strip():
                return title, body
            raise ValueError("the digest is empty")
        except Exception as e:
            # The items rendered; losing them to the digest's template would be worse than plain text.
            log.warning(
                "channel %s: the digest could not be rendered (%s); sending it as plain text", self.channel, e
            )
            self.stats.render_errors += 1
            title = f"{items[0].title} (+{len(items) - 1})"
            return title, "\n\n".join(f"{it.title}\n{it.body}" for it in items)

    def _throttle_wait(self, targets: Sequence[_Target]) -> float:
        """How long apprise would sleep before it sends to these services (its per-object gap), so that the
        wait happens here, on the stop event, and not inside apprise where stop cannot cut it short."""
        now = datetime.now()
        wait = 0.0
        for t in targets:
            rate = float(getattr(t.service, "request_rate_per_sec", 0) or 0)
            last = getattr(t.service, "_last_io_datetime", None)
            if rate > 0 and isinstance(last, datetime):
                wait = max(wait, rate - (now - last).total_seconds())
        return wait

    def _notify(
        self, targets: Sequence[_Target], title: str, body: str, keys: Sequence[str]
    ) -> dict[str, _Outcome] | None:
        wait = self._throttle_wait(targets)
        if wait > 0 and self._stop.wait(wait):
            return None
        try:
            with _key_header(targets, keys):
                result = self._apprise.notify(
                    body=body, title=title, tag=[t.tag for t in targets], timeout=self.send_timeout
                )
        except Exception as e:
            log.exception("channel %s: apprise raised", self.channel)
            why = f"apprise raised {type(e).__name__}: {e}"[:DETAIL_MAX]
            return {t.name: _Outcome(DeliveryStatus.FAILURE, 1, why) for t in targets}
        with result:
            by_tag: dict[str, Any] = {}
            for done in result:
                for tag in done.tag:
                    by_tag[str(tag)] = done
            out: dict[str, _Outcome] = {}
            for t in targets:
                nr = by_tag.get(t.tag)
                if nr is None:
                    why = _detail(result.call_logs()) or f"not dispatched by apprise ({result.status.name})"
                    out[t.name] = _Outcome(DeliveryStatus.FAILURE, 0, why)
                else:
                    status = _status(nr.status)
                    detail = "" if status == DeliveryStatus.SUCCESS else _detail(nr.logs())
                    out[t.name] = _Outcome(status, max(len(nr.attempts), 1), detail)
            return out

    # -- the record ----------------------------------------------------------------------------------------
    def _delivery(
        self, row: OutboxRow, target: str, status: DeliveryStatus, attempts: int, at: float, detail: str
    ) -> Delivery:
        return Delivery(row.key, self.channel, target, status, attempts, at, detail)

    def _record(
        self,
        row: OutboxRow,
        deliveries: list[Delivery],
        state: NoticeState,
        failed: list[str],
        next_attempt_at: float | None,
    ) -> None:
        pending = _Pending(row.key, deliveries, state, failed, next_attempt_at)
        if not self._try_record(pending):
            # Kept, and recorded again before anything else is sent: the row must not come due and go out
            # again while this process lives (a restart before then may send it again).
            self._unrecorded[row.key] = pending

    def _try_record(self, p: _Pending) -> bool:
        try:
            self._outbox.record(p.key, p.deliveries, p.state, p.failed, p.next_attempt_at)
        except Exception:
            log.exception("channel %s: recording %s failed", self.channel, p.key)
            self.stats.outbox_errors += 1
            return False
        self.stats.notices[p.state.value] += 1
        for d in p.deliveries:
            self.stats.deliveries[d.status.value] += 1
        return True

    def _flush_unrecorded(self) -> bool:
        """Record what could not be recorded before; True when nothing is left over."""
        for key, p in list(self._unrecorded.items()):
            if not self._try_record(p):
                return False
            del self._unrecorded[key]
        return True


class Sender:
    """The channel workers of a site's notify section: start, wake, stop."""

    def __init__(
        self,
        notify: NotifyConfig,
        outbox: Outbox,
        render: Render,
        *,
        asset: apprise.AppriseAsset | None = None,
        retry_base: float = 1.0,
        poll_interval: float = 1.0,
        batch_limit: int = 100,
        digest_max: int = 50,
        send_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workers: dict[str, ChannelWorker] = {
            ch.name: ChannelWorker(
                ch,
                outbox,
                render,
                retry_max=notify.retry_max,
                failing_after=notify.channel_failing_after,
                retry_base=retry_base,
                poll_interval=poll_interval,
                batch_limit=batch_limit,
                digest_max=digest_max,
                send_timeout=send_timeout,
                asset=asset,
                clock=clock,
            )
            for ch in notify.channels
        }

    def start(self) -> None:
        for w in self.workers.values():
            w.start()

    def wake(self, channel: str | None = None) -> None:
        """Rows were committed (for `channel`, or any): the workers look now."""
        for name, w in self.workers.items():
            if channel is None or name == channel:
                w.wake()

    def stop(self, timeout: float = 5.0) -> list[str]:
        """Stop every worker; wait at most `timeout` seconds in all. Returns the channels whose thread is
        still inside an apprise call (a daemon thread: it records its result when the call returns)."""
        for w in self.workers.values():
            w.stop()
        deadline = time.monotonic() + timeout
        return [name for name, w in self.workers.items() if not w.join(max(deadline - time.monotonic(), 0.0))]

    def stats(self) -> dict[str, ChannelStats]:
        return {name: w.stats for name, w in self.workers.items()}

    def failing(self) -> list[str]:
        """Channels failing longer than notify.channel_failing_after (the daemon opens a staff incident)."""
        return [name for name, w in self.workers.items() if w.stats.failing]
