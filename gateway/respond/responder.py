"""The respond side in the daemon: incident transitions in, notices out, exactly as the outbox promises.

Each detection round the detector hands over its batch before writing it (`on_batch`): the notice policy
is fed the round's incident transitions and ticked, and what it owes is added to the batch as a writer,
so the notices and the policy's state are committed in the same SQLite transaction as the transitions
that owe them. After the commit (`on_commit`) the channel workers are woken and send. A restart restores
the policy's state from the store; the outbox's idempotency keys make a replayed transition owe nothing
new.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch
from gateway.respond import outbox
from gateway.respond.messages import Messages
from gateway.respond.model import Stage
from gateway.respond.outbox import SqliteOutbox
from gateway.respond.policy import NoticePolicy
from gateway.respond.sender import Sender

log = logging.getLogger("meterwatch.respond")

STATE_KEY = "notice_policy"


class Responder:
    name = "respond"

    def __init__(self, site: Site, manager: IncidentManager, store_path: Path, now: float) -> None:
        self.site = site
        self.manager = manager
        self.channels = list(site.config.notify.channels)
        self.messages = Messages.for_site(site)
        for problem in self.messages.check():  # a site template with an error: said once, at start
            log.error("notice template problem", extra={"fields": {"problem": problem}})
        self.policy = NoticePolicy(site)
        self.outbox = SqliteOutbox(store_path)
        db = sqlite3.connect(store_path, timeout=30.0)
        try:
            state = outbox.load_state(db, STATE_KEY)
        finally:
            db.close()
        if state is not None:
            self.policy.restore(state, now)
        self.sender = Sender(site.config.notify, self.outbox, self._render)
        self.owed = 0  # notices owed since start (rows per channel are counted by the senders)

    def _render(self, stage: Stage, language: str, context: dict[str, Any]) -> tuple[str, str]:
        r = self.messages.render(stage, language, context)
        return r.title, r.body

    # ---- the detector's hooks ---------------------------------------------------------------------------
    def on_batch(self, batch: Batch, now: float) -> None:
        """Add to the round's batch the notices its transitions and the timers owe, and the policy state."""
        incidents = {**self.manager.engine.incidents, **batch.incidents}
        fed = self.policy.feed(batch.timeline, incidents)
        ticked = self.policy.tick(now)
        owed = [*fed.owed, *ticked.owed]
        cancelled = [*fed.cancelled, *ticked.cancelled]
        if not (owed or cancelled or batch.timeline):
            return
        self.owed += len(owed)
        state = self.policy.export()
        channels = self.channels

        def write(db: sqlite3.Connection) -> None:
            outbox.enqueue(db, owed, channels, now)
            outbox.cancel(db, cancelled)
            outbox.save_state(db, STATE_KEY, state)

        batch.writers.append(write)

    def on_commit(self) -> None:
        self.sender.wake()

    # ---- the component ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.sender.start()
        log.info(
            "notices: channels started",
            extra={"fields": {"channels": ",".join(c.name for c in self.channels)}},
        )
        try:
            await stop.wait()
        finally:
            busy = await asyncio.to_thread(self.sender.stop, 5.0)
            if busy:
                log.warning("channels still sending at stop", extra={"fields": {"channels": ",".join(busy)}})
            self.outbox.close()
