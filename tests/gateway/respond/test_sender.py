"""The sending half of the outbox: real apprise to a local HTTP receiver and a local SMTP server.

The outbox here is an in-memory fake of gateway/respond/outbox_api.Outbox (`MemoryOutbox`); it keeps every
record() call, so a test can say how often a row was tried and what each target got. Tests wait on events
(the receiver's count, a row's state), never on a sleep.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apprise
import pytest
from pydantic import SecretStr

from gateway.config.notify import Channel, NotifyConfig
from gateway.respond import outbox as outbox_sql
from gateway.respond.messages import Messages, sample_context
from gateway.respond.model import Delivery, DeliveryStatus, NoticeState, Owed, Stage
from gateway.respond.outbox import SqliteOutbox
from gateway.respond.outbox_api import Outbox, OutboxRow
from gateway.respond.sender import (
    GONE,
    KEY_HEADER,
    KEY_HEADER_MAX,
    ChannelWorker,
    Render,
    Sender,
    carries_key,
    held_units,
    key_header,
    plan_messages,
)
from tests.fixtures.receiver import Receiver
from tests.fixtures.smtp import SmtpServer
from tests.helpers import wait_until

FAST = {"poll_interval": 0.05, "retry_base": 0.05}


@dataclass(frozen=True)
class Record:
    key: str
    deliveries: list[Delivery]
    state: NoticeState
    failed_targets: list[str]
    next_attempt_at: float | None
    at: float


class MemoryOutbox:
    """The Outbox protocol over a dict, thread-safe, with waits for the tests."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.rows: dict[str, OutboxRow] = {}
        self.states: dict[str, NoticeState] = {}
        self.records: list[Record] = []
        self._seq = 0

    def add(
        self,
        channel: str,
        title: str,
        body: str = "body",
        *,
        stage: Stage = Stage.STAFF_OPEN,
        context: dict[str, Any] | None = None,
        failed_targets: list[str] | None = None,
        held_until: str | None = None,
        due_at: float | None = None,
        language: str = "en",
        key: str | None = None,
    ) -> str:
        """A row owed to `channel`; `held_until` marks it held by quiet hours, as the policy does."""
        with self._cond:
            self._seq += 1
            key = key or f"incident:{self._seq}/{stage}/staff/{channel}"
            ctx = dict(context) if context is not None else {"title": title, "body": body}
            if held_until is not None:
                ctx["held_until_local"] = held_until
            self.rows[key] = OutboxRow(
                key=key,
                incident_id=self._seq,
                stage=stage,
                channel=channel,
                audience="staff",
                language=language,
                context=ctx,
                due_at=1000.0 + self._seq if due_at is None else due_at,  # long due, oldest first
                failed_targets=failed_targets,
            )
            self.states[key] = NoticeState.PARTIAL if failed_targets else NoticeState.PENDING
            return key

    # -- the Outbox protocol -------------------------------------------------------------------------------
    def due(self, channel: str, now: float, limit: int) -> list[OutboxRow]:
        with self._cond:
            rows = [
                r
                for r in self.rows.values()
                if r.channel == channel
                and self.states[r.key] in (NoticeState.PENDING, NoticeState.PARTIAL)
                and r.due_at <= now
                and (r.next_attempt_at is None or r.next_attempt_at <= now)
            ]
            return sorted(rows, key=lambda r: (r.due_at, r.key))[:limit]

    def record(
        self,
        row_key: str,
        deliveries: list[Delivery],
        state: NoticeState,
        failed_targets: list[str],
        next_attempt_at: float | None,
    ) -> None:
        with self._cond:
            row = self.rows[row_key]
            self.rows[row_key] = dataclasses.replace(
                row,
                attempts=row.attempts + 1,
                failed_targets=list(failed_targets) or None,
                next_attempt_at=next_attempt_at,
            )
            self.states[row_key] = state
            self.records.append(
                Record(row_key, list(deliveries), state, list(failed_targets), next_attempt_at, time.time())
            )
            self._cond.notify_all()

    # -- for the tests -------------------------------------------------------------------------------------
    def records_of(self, key: str) -> list[Record]:
        with self._cond:
            return [r for r in self.records if r.key == key]

    def wait_state(self, keys: list[str] | str, state: NoticeState, timeout: float = 15.0) -> None:
        keys = [keys] if isinstance(keys, str) else keys
        with self._cond:
            if not self._cond.wait_for(lambda: all(self.states[k] == state for k in keys), timeout=timeout):
                now = {k: self.states[k].value for k in keys if self.states[k] != state}
                pytest.fail(f"not {state.value} after {timeout}s: {now}")

    def wait(self, predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout):
                pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")


def render(stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
    """A stand-in for gateway/respond/messages.py: the context carries its title and body."""
    if "boom" in context:
        raise KeyError(context["boom"])
    if stage == Stage.DIGEST:
        items = context["items"]
        return f"{len(items)} notices", "\n".join(f"{i['title']}: {i['body']}" for i in items)
    return str(context["title"]), str(context["body"])


def channel(name: str, url: str, per_minute: int = 20) -> Channel:
    return Channel(name=name, url=SecretStr(url), audiences=["staff"], language="en", per_minute=per_minute)


def notify(*channels: Channel, retry_max: float = 300.0, failing_after: float = 600.0) -> NotifyConfig:
    return NotifyConfig(channels=list(channels), retry_max=retry_max, channel_failing_after=failing_after)


@pytest.fixture
def outbox() -> MemoryOutbox:
    return MemoryOutbox()


@pytest.fixture
def senders() -> Iterator[Callable[..., Sender]]:
    """Make a Sender (started); every one is stopped at teardown."""
    made: list[Sender] = []

    def make(config: NotifyConfig, box: Outbox, render: Render = render, **options: Any) -> Sender:
        s = Sender(config, box, render, **{**FAST, **options})
        made.append(s)
        s.start()
        return s

    yield make
    for s in made:
        s.stop()


def test_the_memory_outbox_is_an_outbox(outbox: MemoryOutbox) -> None:
    box: Outbox = outbox  # the protocol, checked by mypy where the fake is passed
    assert box.due("ops", 0.0, 10) == []


def test_a_row_goes_to_json_once_and_is_sent(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    first = outbox.add("ops", "power outage: building 3", "since 08:02")
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"))), outbox)
    outbox.wait_state(first, NoticeState.SENT)
    (req,) = receiver.wait_for(1, "/hook")
    assert req.json()["title"] == "power outage: building 3"
    assert req.json()["message"] == "since 08:02"
    assert req.header("X-Meterwatch-Key") == first == "incident:1/staff_open/staff/ops"

    (rec,) = outbox.records_of(first)
    target = f"json://127.0.0.1:{receiver.port}/hook"
    assert rec.state == NoticeState.SENT and rec.failed_targets == [] and rec.next_attempt_at is None
    assert [(d.target, d.status, d.attempts, d.notice_key, d.channel) for d in rec.deliveries] == [
        (target, DeliveryStatus.SUCCESS, 1, first, "ops")
    ]

    # A second row after it: the first is not sent again.
    second = outbox.add("ops", "water: building 5")
    sender.wake()
    outbox.wait_state(second, NoticeState.SENT)
    assert [r.json()["title"] for r in receiver.wait_for(2, "/hook")] == [
        "power outage: building 3",
        "water: building 5",
    ]
    assert len(outbox.records_of(first)) == 1
    stats = sender.stats()["ops"]
    assert stats.notices == {"sent": 2} and stats.deliveries == {"success": 2}
    assert stats.messages == 2 and stats.last_success is not None and stats.failing_since is None


def test_only_the_failed_target_is_retried_with_a_growing_capped_backoff(
    receiver_factory: Callable[[], Receiver], outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    # One channel URL that apprise splits into two services (comma separated): one target each.
    good, bad = receiver_factory(), receiver_factory()
    bad.fail("/b")
    url = f"{good.url('json', '/a')}, {bad.url('json', '/b')}"
    key = outbox.add("ops", "power outage")
    senders(notify(channel("ops", url), retry_max=0.2), outbox)

    bad.wait_for(5, "/b")  # five failed rounds at the bad target
    bad.heal("/b")
    outbox.wait_state(key, NoticeState.SENT)

    assert good.count("/a") == 1  # never sent twice to the target that had it
    # every attempt at either target carries the row's key: a receiver can tell a retry from news
    assert {tuple(r.keys) for r in good.requests("/a") + bad.requests("/b")} == {(key,)}
    a, b = f"json://127.0.0.1:{good.port}/a", f"json://127.0.0.1:{bad.port}/b"
    recs = outbox.records_of(key)
    assert len(recs) == bad.count("/b") >= 6
    assert {(d.target, d.status) for d in recs[0].deliveries} == {
        (a, DeliveryStatus.SUCCESS),
        (b, DeliveryStatus.FAILURE),
    }
    assert "500" in next(d.detail for d in recs[0].deliveries if d.target == b)
    for rec in recs[1:]:  # later rounds: the failed target only
        assert [d.target for d in rec.deliveries] == [b]
    assert [r.state for r in recs] == [NoticeState.PARTIAL] * (len(recs) - 1) + [NoticeState.SENT]
    assert all(r.failed_targets == [b] for r in recs[:-1])
    assert [d.attempts for r in recs for d in r.deliveries if d.target == b] == list(range(1, len(recs) + 1))
    # The wait after the n-th failed round: 0.05, 0.1, 0.2, then capped at retry_max 0.2.
    waits = [r.next_attempt_at - r.deliveries[0].at for r in recs[:-1] if r.next_attempt_at is not None]
    assert waits == pytest.approx([0.05, 0.1, 0.2] + [0.2] * (len(recs) - 4))
    # The requests that reached the bad target came no sooner than the backoff said.
    times = [r.at for r in bad.requests("/b")]
    assert all(t2 - t1 >= w - 0.01 for t1, t2, w in zip(times, times[1:], waits, strict=False))


def test_a_burst_over_the_rate_goes_as_one_digest(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    keys = [outbox.add("ops", f"notice {i:02d}", f"text {i:02d}") for i in range(30)]
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"), per_minute=10)), outbox)
    outbox.wait_state(keys, NoticeState.SENT)

    messages = receiver.requests("/hook")
    assert len(messages) <= 10
    digests = [m.json() for m in messages if m.json()["title"].endswith(" notices")]
    singles = [m.json() for m in messages if not m.json()["title"].endswith(" notices")]
    assert len(digests) == 1
    carried = [line.split(":")[0] for line in digests[0]["message"].splitlines()]
    assert digests[0]["title"] == f"{len(carried)} notices"
    # Every notice exactly once, in a message of its own or in the digest; the oldest go alone.
    assert sorted([s["title"] for s in singles] + carried) == [f"notice {i:02d}" for i in range(30)]
    assert [s["title"] for s in singles] == [f"notice {i:02d}" for i in range(len(singles))]
    for k in keys:  # each row recorded once, as sent
        (rec,) = outbox.records_of(k)
        assert rec.state == NoticeState.SENT
    digested = [outbox.records_of(k)[0] for k in keys[len(singles) :]]
    assert all(r.deliveries[0].detail == f"digest of {len(carried)}" for r in digested)
    stats = sender.stats()["ops"]
    assert (stats.messages, stats.digests, stats.digested_rows) == (len(messages), 1, len(carried))


def test_plan_messages() -> None:
    def same(_: object) -> int:
        return 0

    assert plan_messages(list(range(3)), same, 5, 50) == [[0], [1], [2]]
    assert plan_messages(list(range(30)), same, 10, 50) == [[i] for i in range(9)] + [list(range(9, 30))]
    assert plan_messages(list(range(30)), same, 10, 5) == [[i] for i in range(9)] + [list(range(9, 14))]
    assert plan_messages(list(range(5)), same, 0, 50) == []
    assert plan_messages(list(range(5)), same, 1, 50) == [[0, 1, 2, 3, 4]]
    # Rows owed to different targets never share a digest; each served group costs one token.
    parity = plan_messages(list(range(10)), lambda i: i % 2, 4, 50)
    assert parity == [[0], [1], [2, 4, 6, 8], [3, 5, 7, 9]]
    # More groups than tokens: the oldest groups go, as digests, the others wait.
    assert plan_messages(list(range(6)), lambda i: i % 3, 2, 50) == [[0, 3], [1, 4]]


def test_mailto_reaches_the_smtp_server_with_the_title_as_subject(
    smtp_server: SmtpServer, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    key = outbox.add("mail", "停电：3号楼", "since 08:02, hotline 12345")
    senders(notify(channel("mail", smtp_server.mailto(to="ops@example.org"))), outbox)
    (mail,) = smtp_server.wait_for(1)
    assert mail.subject == "停电：3号楼"
    assert "since 08:02, hotline 12345" in mail.text()
    assert mail.rcpt_tos == ["ops@example.org"] and mail.mail_from == "gw@example.org"
    assert mail.message["X-Meterwatch-Key"] == key  # an e-mail header: mailto:// takes +Header= too
    outbox.wait_state(key, NoticeState.SENT)
    (rec,) = outbox.records_of(key)
    (d,) = rec.deliveries
    assert d.status == DeliveryStatus.SUCCESS and smtp_server.password not in d.target
    assert d.target.startswith("mailto://gateway:") and "ops%40example.org" in d.target


def test_one_url_with_two_recipients_is_one_target(
    smtp_server: SmtpServer, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    # apprise reports one status for the URL, not one per recipient: one Delivery.
    key = outbox.add("mail", "water: building 5")
    senders(notify(channel("mail", smtp_server.mailto(to="a@example.org,b@example.org"))), outbox)
    mails = smtp_server.wait_for(2)
    assert sorted(r for m in mails for r in m.rcpt_tos) == ["a@example.org", "b@example.org"]
    outbox.wait_state(key, NoticeState.SENT)
    (rec,) = outbox.records_of(key)
    assert len(rec.deliveries) == 1


def test_a_render_error_is_a_failed_delivery_and_the_worker_goes_on(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    bad = outbox.add("ops", "", context={"boom": "no such key: eta"})
    good = outbox.add("ops", "power outage")
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"))), outbox)
    outbox.wait_state(good, NoticeState.SENT)
    outbox.wait_state(bad, NoticeState.FAILED)
    (rec,) = outbox.records_of(bad)
    (d,) = rec.deliveries
    assert d.status == DeliveryStatus.FAILURE and d.attempts == 0
    assert d.detail.startswith("render failed: KeyError") and "no such key: eta" in d.detail
    assert rec.next_attempt_at is None
    # Not sent, and not tried again: another row after it goes, the failed one stays as it is.
    later = outbox.add("ops", "water")
    sender.wake()
    outbox.wait_state(later, NoticeState.SENT)
    assert [r.json()["title"] for r in receiver.requests("/hook")] == ["power outage", "water"]
    assert len(outbox.records_of(bad)) == 1
    assert sender.stats()["ops"].render_errors == 1
    assert sender.stats()["ops"].failing_since is None  # a template's fault is not the channel's


def test_a_slow_channel_does_not_delay_another(
    receiver_factory: Callable[[], Receiver], outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    slow, fast = receiver_factory(), receiver_factory()
    slow.hold("/slow")  # its requests stay unanswered until released
    held = outbox.add("slow", "to the slow channel")
    quick = outbox.add("fast", "to the fast channel")
    sender = senders(
        notify(channel("slow", slow.url("json", "/slow")), channel("fast", fast.url("json", "/fast"))),
        outbox,
    )
    slow.wait_for(1, "/slow")  # the slow channel's worker is inside apprise now
    outbox.wait_state(quick, NoticeState.SENT)
    later = outbox.add("fast", "another one")
    sender.wake("fast")
    outbox.wait_state(later, NoticeState.SENT)
    assert outbox.states[held] == NoticeState.PENDING and outbox.records_of(held) == []
    slow.release("/slow")
    outbox.wait_state(held, NoticeState.SENT)
    assert slow.count("/slow") == 1


def test_stop_returns_within_a_few_seconds(
    receiver: Receiver, smtp_server: SmtpServer, outbox: MemoryOutbox
) -> None:
    # One worker is inside a request its receiver answers after 2 s; the other waits for apprise's 5.5 s
    # gap between two e-mails to the same server. stop() cuts the wait short and waits out the request.
    receiver.delay("/slow", 2.0)
    outbox.add("slow", "slow one")
    first = outbox.add("mail", "first mail")
    second = outbox.add("mail", "second mail")
    sender = Sender(
        notify(channel("slow", receiver.url("json", "/slow")), channel("mail", smtp_server.mailto())),
        outbox,
        render,
        poll_interval=0.05,
        retry_base=0.05,
    )
    sender.start()
    receiver.wait_for(1, "/slow")
    smtp_server.wait_for(1)
    outbox.wait_state(first, NoticeState.SENT)
    assert sender.stop(timeout=4.0) == []
    assert outbox.states[second] == NoticeState.PENDING and outbox.records_of(second) == []
    assert len(smtp_server.mails()) == 1


def test_a_channel_failing_longer_than_the_limit_is_flagged(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    receiver.fail("/down")
    key = outbox.add("ops", "power outage")
    sender = senders(
        notify(channel("ops", receiver.url("json", "/down")), retry_max=0.1, failing_after=0.3), outbox
    )
    worker = sender.workers["ops"]
    outbox.wait(lambda: worker.stats.failing_since is not None, what="a failure")
    deadline = time.monotonic() + 15
    while not sender.failing() and time.monotonic() < deadline:
        receiver.wait_for(receiver.count("/down") + 1, "/down")  # one more failed round
    assert sender.failing() == ["ops"]
    assert outbox.states[key] == NoticeState.PENDING  # nobody has it: owed to every target
    assert worker.stats.deliveries["failure"] >= 2 and worker.stats.last_success is None

    receiver.heal("/down")
    outbox.wait_state(key, NoticeState.SENT)
    outbox.wait(lambda: not worker.stats.failing and worker.stats.failing_since is None, what="healed")
    assert sender.failing() == []


class LockedOutbox(MemoryOutbox):
    """record() fails its first `n` calls, as SQLite does when the file stays locked."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.refusals = n

    def record(self, *args: Any, **kwargs: Any) -> None:
        with self._cond:
            if self.refusals > 0:
                self.refusals -= 1
                raise sqlite3.OperationalError("database is locked")
        super().record(*args, **kwargs)


def test_a_refused_record_is_kept_and_the_row_not_sent_again(
    receiver: Receiver, senders: Callable[..., Sender]
) -> None:
    box = LockedOutbox(3)
    key = box.add("ops", "power outage")
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"))), box)
    box.wait_state(key, NoticeState.SENT)
    assert receiver.count("/hook") == 1
    (rec,) = box.records_of(key)
    assert [d.status for d in rec.deliveries] == [DeliveryStatus.SUCCESS]
    assert sender.stats()["ops"].outbox_errors == 3


def test_a_target_no_longer_configured_is_given_up(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    key = outbox.add("ops", "power outage", failed_targets=["json://old-host/hook"])
    senders(notify(channel("ops", receiver.url("json", "/hook"))), outbox)
    outbox.wait_state(key, NoticeState.FAILED)
    (rec,) = outbox.records_of(key)
    assert [(d.target, d.status, d.detail) for d in rec.deliveries] == [
        ("json://old-host/hook", DeliveryStatus.FAILURE, GONE)
    ]
    assert receiver.count() == 0


def test_target_names_are_private_and_unique() -> None:
    ch = channel(
        "ops", "json://user:secret@10.0.0.1/hook, json://user:other@10.0.0.1/hook, wecombot://ABCDEFGH"
    )
    worker = ChannelWorker(ch, MemoryOutbox(), render)
    names = [t.name for t in worker.targets]
    assert len(names) == len(set(names)) == 3
    assert names[1] == f"{names[0]} #2"
    assert not any("secret" in n or "other" in n or "ABCDEFGH" in n for n in names)


# ---- the idempotency key on the wire -------------------------------------------------------------------


def test_json_form_and_xml_carry_the_row_key_for_the_one_call(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    url = ", ".join(
        [
            receiver.url("json", "/j") + "?+X-Site=demo",  # a header of the site's own stays
            receiver.url("form", "/f"),
            receiver.url("xml", "/x") + "?+X-Meterwatch-Key=static",  # ours wins while we send
        ]
    )
    first = outbox.add("ops", "power outage")
    second = outbox.add("ops", "water")
    sender = senders(notify(channel("ops", url)), outbox)
    outbox.wait_state([first, second], NoticeState.SENT)
    for path in ("/j", "/f", "/x"):
        assert [r.header(KEY_HEADER) for r in receiver.requests(path)] == [first, second], path
    assert {r.header("X-Site") for r in receiver.requests("/j")} == {"demo"}
    assert b"title=power+outage" in receiver.requests("/f")[0].body  # a form and an XML post, not JSON
    assert receiver.requests("/x")[0].body.lstrip().startswith(b"<?xml")
    # The services keep what their URLs said, not the last message's key.
    services = [t.service for t in sender.workers["ops"].targets]
    assert [s.headers.get(KEY_HEADER) for s in services] == [None, None, "static"]
    assert services[0].headers == {"X-Site": "demo"}


def test_a_key_that_could_break_a_header_is_percent_encoded_and_decodes_back(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    odd = "incident:7/staff_open/residents:楼 B, east\r\nX-Evil: 1/ops"
    key = outbox.add("ops", "power outage", key=odd)
    senders(notify(channel("ops", receiver.url("json", "/hook"))), outbox)
    outbox.wait_state(key, NoticeState.SENT)
    (req,) = receiver.requests("/hook")
    assert req.header("X-Evil") is None
    value = req.header(KEY_HEADER)
    assert value is not None and value.isascii() and "," not in value and " " not in value
    assert req.keys == [odd]
    assert key_header(["incident:1/staff_open/staff/ops", "incident:2/flapping/staff/ops"]) == (
        "incident:1/staff_open/staff/ops, incident:2/flapping/staff/ops"
    )
    # A digest of many long keys: one short value, the same for the same rows, another for others.
    long = [
        f"maintenance:{'w' * 64}/residents_notice/residents:{'b' * 60}{i:04d}/{'c' * 64}" for i in range(50)
    ]
    value = key_header(long)
    assert value.startswith("sha256:") and len(value) == 7 + 32
    assert key_header(list(long)) == value != key_header(long[1:])
    assert len(key_header(long[:10])) <= KEY_HEADER_MAX and key_header(long[:10]).count(", ") == 9


def test_robots_cannot_carry_the_key_json_form_xml_and_mail_can() -> None:
    for url in ("wecombot://ABCDEFGHIJ", "dingtalk://abcdefghij", "feishu://abcdefghij"):
        service = apprise.Apprise.instantiate(url)
        assert service is not None and not carries_key(service), url
    for url in ("json://h/x", "jsons://h/x", "form://h/x", "xml://h/x", "mailto://u:p@example.org"):
        service = apprise.Apprise.instantiate(url)
        assert service is not None and carries_key(service), url


# ---- quiet hours' morning digest -----------------------------------------------------------------------

HELD = "2026-03-02T07:00:00+08:00"  # the policy's context["held_until_local"]: the quiet hours' end
MORNING = 5000.0  # the due_at of every row quiet hours held (long past for the worker's clock)


def test_held_units() -> None:
    items = [("h", 0), ("n", 0), ("h", 0), ("h", 1), ("h", 0), ("n", 1)]

    def held(it: tuple[str, int]) -> bool:
        return it[0] == "h"

    def group(it: tuple[str, int]) -> int:
        return it[1]

    by_index = list(range(len(items)))
    units = held_units(by_index, lambda i: held(items[i]), lambda i: group(items[i]), 50)
    assert units == [[0, 2, 4], [1], [3], [5]]  # held of a group together, at their oldest; others alone
    units = held_units(by_index, lambda i: held(items[i]), lambda i: group(items[i]), 2)
    assert units == [[0, 2], [1], [3], [4], [5]]  # at most digest_max held in one
    assert held_units([], held, group, 50) == []


def test_notices_held_by_quiet_hours_go_as_one_digest_the_others_alone(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    held = [outbox.add("ops", f"held {i}", f"text {i}", held_until=HELD, due_at=MORNING) for i in range(3)]
    alone = [outbox.add("ops", f"urgent {i}", f"now {i}", due_at=MORNING) for i in range(2)]
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"))), outbox)
    outbox.wait_state(held + alone, NoticeState.SENT)

    messages = receiver.requests("/hook")
    assert len(messages) == 3
    (digest,) = [m for m in messages if len(m.keys) > 1]
    assert digest.keys == held  # one message, every held notice's key
    assert digest.json()["title"] == "3 notices"
    assert digest.json()["message"].splitlines() == [f"held {i}: text {i}" for i in range(3)]
    assert sorted(m.json()["title"] for m in messages if m is not digest) == ["urgent 0", "urgent 1"]
    assert sorted(k for m in messages if m is not digest for k in m.keys) == alone
    for k in held:  # each held row recorded once, as sent through the digest
        (rec,) = outbox.records_of(k)
        assert rec.state == NoticeState.SENT
        assert [(d.status, d.detail) for d in rec.deliveries] == [
            (DeliveryStatus.SUCCESS, "quiet-hours digest of 3")
        ]
    for k in alone:
        (rec,) = outbox.records_of(k)
        assert [d.detail for d in rec.deliveries] == [""]
    stats = sender.stats()["ops"]
    assert (stats.messages, stats.digests, stats.digested_rows) == (3, 1, 3)


def test_the_morning_digest_is_the_digest_template_in_the_channels_language(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    messages = Messages()

    def real(stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
        r = messages.render(stage, language, context)
        return r.title, r.body

    stages = [Stage.RESIDENTS_UPDATE, Stage.ALL_CLEAR, Stage.RESOLVED]
    held = [
        outbox.add(
            "ops", "", stage=st, context=sample_context(st), held_until=HELD, due_at=MORNING, language="zh"
        )
        for st in stages
    ]
    ops = Channel(
        name="ops", url=SecretStr(receiver.url("json", "/hook")), audiences=["staff"], language="zh"
    )
    senders(notify(ops), outbox, render=real)
    outbox.wait_state(held, NoticeState.SENT)
    (msg,) = receiver.requests("/hook")
    assert msg.json()["title"] == "通知汇总（3条）"
    body = msg.json()["message"]
    for n, st in enumerate(stages, 1):  # each notice as its own template says it, numbered
        one = messages.render(st, "zh", sample_context(st))
        assert f"{n}. {one.title}" in body and one.body in body


def test_a_target_the_morning_digest_failed_at_gets_it_again_and_only_it(
    receiver_factory: Callable[[], Receiver], outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    good, bad = receiver_factory(), receiver_factory()
    bad.fail("/b")
    held = [outbox.add("ops", f"held {i}", held_until=HELD, due_at=MORNING) for i in range(3)]
    url = f"{good.url('json', '/a')}, {bad.url('json', '/b')}"
    senders(notify(channel("ops", url), retry_max=0.2), outbox)
    bad.wait_for(3, "/b")  # the digest failed three times at the bad target
    bad.heal("/b")
    outbox.wait_state(held, NoticeState.SENT)

    (to_good,) = good.requests("/a")  # the good target had the digest once, never again
    assert to_good.keys == held and to_good.json()["title"] == "3 notices"
    retries = bad.requests("/b")
    assert len(retries) >= 4
    assert all(r.keys == held and r.json()["title"] == "3 notices" for r in retries)  # one digest each time
    a, b = f"json://127.0.0.1:{good.port}/a", f"json://127.0.0.1:{bad.port}/b"
    for k in held:
        recs = outbox.records_of(k)
        assert len(recs) == len(retries)
        assert {d.target for d in recs[0].deliveries} == {a, b}
        assert all([d.target for d in r.deliveries] == [b] for r in recs[1:])
        assert [r.state for r in recs] == [NoticeState.PARTIAL] * (len(recs) - 1) + [NoticeState.SENT]
        assert all(d.detail.startswith("quiet-hours digest of 3") for r in recs for d in r.deliveries)


def test_the_rate_limit_counts_a_morning_digest_as_one_message(
    receiver: Receiver, outbox: MemoryOutbox, senders: Callable[..., Sender]
) -> None:
    held = [outbox.add("ops", f"held {i}", held_until=HELD, due_at=MORNING) for i in range(3)]
    alone = [outbox.add("ops", f"urgent {i}", due_at=MORNING + 1) for i in range(3)]
    sender = senders(notify(channel("ops", receiver.url("json", "/hook"), per_minute=2)), outbox)
    outbox.wait_state(held + alone, NoticeState.SENT)
    # Two tokens: the held digest (oldest) and one rate-limit digest of the rest, each row once.
    messages = receiver.requests("/hook")
    assert [m.keys for m in messages] == [held, alone]
    assert [outbox.records_of(k)[0].deliveries[0].detail for k in held + alone] == [
        "quiet-hours digest of 3"
    ] * 3 + ["digest of 3"] * 3
    assert sender.stats()["ops"].digests == 2


def test_the_morning_digest_through_the_sqlite_outbox_and_its_delivery_log(
    tmp_path: Path, receiver: Receiver, senders: Callable[..., Sender]
) -> None:
    # Rows as the policy owes them in quiet hours (held_until_local, due at the quiet hours' end), written
    # by the outbox's own enqueue into SQLite; one notice that was never held is due at the same time.
    messages = Messages()

    def real(stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
        r = messages.render(stage, language, context)
        return r.title, r.body

    ch = Channel(
        name="desk",
        url=SecretStr(receiver.url("json", "/desk")),
        audiences=["staff", "residents"],
        language="en",
    )
    morning = time.time() - 60

    def owed(i: int, stage: Stage, audience: str, held: bool) -> Owed:
        ctx = sample_context(stage)
        if held:
            ctx["held_until_local"] = HELD
        return Owed(f"incident:{i}/{stage}/{audience}", i, stage, audience, morning, ctx)

    notices = [
        owed(1, Stage.RESIDENTS_UPDATE, "residents:B1", True),
        owed(2, Stage.ALL_CLEAR, "residents:B2", True),
        owed(3, Stage.RESOLVED, "staff", True),
        owed(4, Stage.STAFF_OPEN, "staff", False),
    ]
    path = tmp_path / "incidents.sqlite"
    db = sqlite3.connect(path)
    with db:
        outbox_sql.create(db)
        assert outbox_sql.enqueue(db, notices, [ch], morning) == 4
    db.close()
    box = SqliteOutbox(path)
    try:
        senders(notify(ch), box, render=real)
        got = receiver.wait_for(2, "/desk")
        digest, alone = sorted(got, key=lambda r: -len(r.keys))
        held_keys = [
            "incident:1/residents_update/residents/desk",
            "incident:2/all_clear/residents/desk",
            "incident:3/resolved/staff/desk",
        ]
        assert sorted(digest.keys) == held_keys and digest.json()["title"] == "3 notices"
        assert alone.keys == ["incident:4/staff_open/staff/desk"]
        target = f"json://127.0.0.1:{receiver.port}/desk"

        def logged() -> list[tuple[str, str, str, int]]:
            return sorted(
                (d.notice_key, d.status.value, d.detail, d.attempts)
                for i in range(1, 5)
                for d in box.deliveries(i)
            )

        wait_until(lambda: len(logged()) == 4, what="four rows in the delivery log")
        assert logged() == sorted(
            [(k, "success", "quiet-hours digest of 3", 1) for k in held_keys]
            + [("incident:4/staff_open/staff/desk", "success", "", 1)]
        )
        assert {d.target for i in range(1, 5) for d in box.deliveries(i)} == {target}
        assert box.depth()[0] == 0  # every row sent
    finally:
        box.close()
    assert receiver.count("/desk") == 2
