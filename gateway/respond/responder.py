"""The respond side in the daemon: incident transitions in, notices and response steps out, one transaction.

Each detection round the detector hands over its batch before writing it (`on_batch`): the notice policy and
the dispatcher are fed the round's incident transitions and ticked, what staff did since the last round
(the desk's actions, gateway/respond/desk.py) is added, and the notices owed, the response steps for the
timeline and both parts' state are added to the batch, so they are committed in the same SQLite transaction
as the transitions that owe them. After the commit (`on_commit`) the channel workers are woken and send. A
restart restores both parts' state from the store; the outbox's idempotency keys make a replayed transition
owe nothing new.

It also watches the channels: one failing for longer than notify.channel_failing_after opens a staff
incident (category `notify_channel`, through the other channels), resolved when the channel works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from gateway.config import Site
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch
from gateway.respond import outbox
from gateway.respond.dispatch import Dispatcher
from gateway.respond.links import LinkSigner, link_url, load_secret
from gateway.respond.messages import Messages
from gateway.respond.model import Owed, Stage
from gateway.respond.outbox import SqliteOutbox
from gateway.respond.policy import NoticePolicy, Notices
from gateway.respond.roster import Roster
from gateway.respond.sender import Sender
from rules.model import Incident, IncidentState

log = logging.getLogger("meterwatch.respond")

STATE_KEY = "notice_policy"
DISPATCH_KEY = "dispatcher"
CHANNEL_CATEGORY = "notify_channel"  # the staff incident of a failing channel: never dispatched
CHANNEL_PREFIX = "channel:"  # its symptom names the channel (the incident survives a restart)
WATCH_EVERY = 5.0

T = TypeVar("T")
# run fn(now) between two detection rounds and get its result once committed (Detector.call)
Call = Callable[[Callable[[float], T]], Awaitable[T]]


class Responder:
    name = "respond"

    def __init__(
        self, site: Site, manager: IncidentManager, store_path: Path, state_dir: Path, now: float
    ) -> None:
        self.site = site
        self.manager = manager
        self.tz = ZoneInfo(site.config.site.timezone)
        self.channels = list(site.config.notify.channels)
        self.messages = Messages.for_site(site)
        for problem in self.messages.check():  # a site template with an error: said once, at start
            log.error("notice template problem", extra={"fields": {"problem": problem}})
        self.signer = self._signer(state_dir)
        self.policy = NoticePolicy(site)
        self.roster = Roster(site.config.oncall, self.tz)
        self.dispatcher = Dispatcher(site, self.roster, self._links if self.signer else None)
        self.outbox = SqliteOutbox(store_path)
        db = sqlite3.connect(store_path, timeout=30.0)
        try:
            state = outbox.load_state(db, STATE_KEY)
            dispatch_state = outbox.load_state(db, DISPATCH_KEY)
        finally:
            db.close()
        if state is not None:
            self.policy.restore(state, now)
        if dispatch_state is not None:
            self.dispatcher.restore(dispatch_state, now)
        self.sender = Sender(site.config.notify, self.outbox, self._render)
        self.owed = 0  # notices owed since start (rows per channel are counted by the senders)
        self._pending: list[Notices] = []  # the desk's actions since the last round
        self._opening_notes: list[tuple[int, str, str, float]] = []
        self._dirty = False  # state changed by the desk without notices (an override)
        self._call: Call[Any] | None = None
        self._channel_incidents: dict[str, int] = {  # failing channel -> its open staff incident
            ref.removeprefix(CHANNEL_PREFIX): inc.id
            for inc in manager.engine.incidents.values()
            if inc.manual and inc.category == CHANNEL_CATEGORY and inc.is_open
            for ref in inc.symptoms
            if ref.startswith(CHANNEL_PREFIX)
        }

    def _signer(self, state_dir: Path) -> LinkSigner | None:
        links = self.site.config.notify.links
        if links.base_url is None:
            return None
        return LinkSigner(load_secret(state_dir, os.environ, links.secret_env))

    def _links(self, incident_id: int, who: str) -> dict[str, str]:
        links = self.site.config.notify.links
        assert self.signer is not None and links.base_url is not None
        return {
            action: link_url(links.base_url, action, self.signer.make(action, incident_id, who, links.ttl))
            for action in ("ack", "on_site")
        }

    def _with_vote(self, owed: Owed) -> Owed:
        """A residents' all-clear with its one-tap rating link (links.vote), signed for the audience told
        (`who` = its building, or "residents"); made here, where the signer is, so the policy stays pure.
        A drill's asks no rating: it would count in the satisfaction of real outages."""
        links = self.site.config.notify.links
        if (
            self.signer is None
            or links.base_url is None
            or owed.stage != Stage.ALL_CLEAR
            or not (owed.audience == "residents" or owed.audience.startswith("residents:"))
            or (owed.context.get("incident") or {}).get("drill")
        ):
            return owed
        who = owed.audience.partition(":")[2] or "residents"
        try:
            token = self.signer.make("vote", owed.incident_id, who, links.vote_ttl)
        except ValueError:  # an audience no token can name: the all-clear goes without the link
            log.warning("no rating link for an all-clear", extra={"fields": {"audience": owed.audience}})
            return owed
        made = dict(owed.context.get("links") or {})
        made["vote"] = link_url(links.base_url, "vote", token)
        return dataclasses.replace(owed, context={**owed.context, "links": made})

    def _render(self, stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
        r = self.messages.render(stage, language, context)
        return r.title, r.body

    def bind(self, call: Call[Any]) -> None:
        """How to run an action between detection rounds (the detector's `call`): the channel watch opens
        and resolves its staff incidents through it."""
        self._call = call

    # ---- the desk's actions (run between rounds, see gateway/respond/desk.py) ----------------------------
    def add(self, notices: Notices) -> None:
        self._pending.append(notices)
        self._dirty = True

    def note_after_opening(self, incident_id: int, who: str, text: str, now: float) -> None:
        """A note for an incident opened in this round (the dispatcher learns of it when the round's
        transitions are fed)."""
        self._opening_notes.append((incident_id, who, text, now))
        self._dirty = True

    def changed(self) -> None:
        """State changed without notices (an on-call override): save it with the next round."""
        self._dirty = True

    # ---- the detector's hooks ---------------------------------------------------------------------------
    def on_batch(self, batch: Batch, now: float) -> None:
        """Add to the round's batch the notices and response steps its transitions, the timers and the
        desk's actions owe, and both parts' state."""
        incidents = {**self.manager.engine.incidents, **batch.incidents}
        parts = [
            *self._pending,
            self.policy.feed(batch.timeline, incidents),
            self.dispatcher.feed(batch.timeline, incidents),
            *(self.dispatcher.note(i, who, text, t) for i, who, text, t in self._opening_notes),
            self.policy.tick(now),
            self.dispatcher.tick(now),
        ]
        self._pending, self._opening_notes = [], []
        owed = [self._with_vote(o) for p in parts for o in p.owed]
        cancelled = [k for p in parts for k in p.cancelled]
        timeline = [c for p in parts for c in p.timeline]
        if not (owed or cancelled or timeline or batch.timeline or self._dirty):
            return
        self._dirty = False
        self.owed += len(owed)
        for change in timeline:
            self.manager.log_change(change)
        batch.timeline.extend(timeline)
        state = self.policy.export()
        dispatch_state = self.dispatcher.export()
        channels = self.channels

        def write(db: sqlite3.Connection) -> None:
            outbox.enqueue(db, owed, channels, now)
            outbox.cancel(db, cancelled)
            outbox.save_state(db, STATE_KEY, state)
            outbox.save_state(db, DISPATCH_KEY, dispatch_state)

        batch.writers.append(write)

    def on_commit(self) -> None:
        self.sender.wake()

    # ---- failing channels ---------------------------------------------------------------------------------
    def _watch(self, failing: set[str], now: float) -> None:
        """Open a staff incident for each channel newly failing, resolve those of channels working again."""
        for name in sorted(failing - set(self._channel_incidents)):
            proto = Incident(
                id=0, key="", category=CHANNEL_CATEGORY, scope="site",
                title=f"notice channel {name} is failing", severity="major", event_code="006",
                audiences=["staff"], households=0, state=IncidentState.FIRING,
                opened_at=now, first_evidence_at=now, updated_at=now,
                symptoms={f"{CHANNEL_PREFIX}{name}": [CHANNEL_CATEGORY]},
                evidence=[
                    f"channel {name} has failed to deliver for longer than "
                    f"{self.site.config.notify.channel_failing_after:g} s; its notices are kept and retried"
                ],
            )  # fmt: skip
            inc = self.manager.open_manual(proto, now)
            self._channel_incidents[name] = inc.id
        for name in sorted(set(self._channel_incidents) - failing):
            inc_id = self._channel_incidents.pop(name)
            with contextlib.suppress(KeyError, ValueError):  # staff may have resolved it already
                self.manager.resolve_manual(inc_id, now, f"channel {name} delivers again")

    async def _watch_channels(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_EVERY)
            if stop.is_set() or self._call is None:
                continue
            failing = set(self.sender.failing())
            if failing != set(self._channel_incidents):
                try:
                    await self._call(functools.partial(self._watch, failing))
                except Exception:
                    log.exception("cannot record a failing channel's staff incident; tried again")

    # ---- the component ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.sender.start()
        log.info(
            "notices: channels started",
            extra={"fields": {"channels": ",".join(c.name for c in self.channels)}},
        )
        try:
            await self._watch_channels(stop)
        finally:
            busy = await asyncio.to_thread(self.sender.stop, 5.0)
            if busy:
                log.warning("channels still sending at stop", extra={"fields": {"channels": ",".join(busy)}})
            self.outbox.close()
