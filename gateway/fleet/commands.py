"""Acknowledge from afar (issue 13, item 2): the gateway's side of the command topic, when `fleet.commands`
is enabled (it is off by default).

The gateway subscribes (QoS 1, a persistent session, manual PUBACKs) to `command/<gateway>`. Each message
is checked in this order: well formed (gateway/fleet/command_format.py), signed by the fleet view's key,
meant for this company, site and gateway, not older than `max_age` nor issued more than `skew` in the
future nor past its `expires`, its id never seen before (ids are kept in the incident store's
`fleet_commands` table, so a replay is caught after a restart too), and then applied through a desk exactly
as the HTTP API applies staff's actions (gateway/respond/desk.py: the same dispatcher steps, notices and
escalation stop), with `who` recorded as "<who> via fleet". The gateway stays the authority: the desk
refuses what it would refuse to staff (an incident resolved, or not held), and that refusal is the answer.

Every command gets one outcome on `events/<gateway>` (type `command`, accepted or rejected with a code and
a reason) through the fleet outbox, so it is delivered like every other event. An accepted command's
outcome and its id are written by a detector hook in the same transaction as the action itself (the desk's
call is wrapped to learn that it ran), after the bridge's transition events: a stored action is an answered
command, and the outcome never overtakes the `acknowledged` it made. A rejected one is written in a
transaction of its own. The PUBACK goes to the broker only once the outcome is stored (or the action is in
the detector's hands), so a gateway that dies in between gets the command again.

A payload that is not a validly signed command cannot be trusted to be few: its outcomes are told at most
UNSIGNED_BURST at once and UNSIGNED_RATE a second (the others only counted and logged), so no one who may
publish on the topic can flood the outbox and push out the gateway's real events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import Site
from gateway.config.fleet import FleetConfig
from gateway.fleet import outbox
from gateway.fleet.command_format import BadCommand, Command, parse, verify
from gateway.fleet.mqttconn import gateway_client, on_disconnect, refused, stop_client
from gateway.fleet.outbox import Owed
from gateway.fleet.topics import VERSION, Topics, dumps
from gateway.incidents.store import Batch
from gateway.respond.desk_api import Desk, DeskError

log = logging.getLogger("meterwatch.fleet.commands")

T = TypeVar("T")
Call = Callable[[Callable[[float], Any]], Awaitable[Any]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_commands(
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_commands_at ON fleet_commands(at);
"""
VIA = " via fleet"  # appended to `who`: the timeline says the action came from the fleet view
RECEIVE_MAXIMUM = 20  # commands the broker may have in flight to us (each acknowledged once handled)
QUEUE = 1000  # QoS 0 messages are not flow-controlled: past this many waiting, they are dropped
UNSIGNED_BURST = 30
UNSIGNED_RATE = 0.5  # outcomes a second told for payloads that are not validly signed, past the burst
KEEP_MIN = 86400.0  # seen ids are kept at least a day (and at least twice max_age)

# outcome codes (docs/fleet-topics.md)
ACCEPTED = "accepted"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
WRONG_GATEWAY = "wrong_gateway"
EXPIRED = "expired"
FUTURE = "future"
REPLAYED = "replayed"
UNKNOWN_INCIDENT = "unknown_incident"
REFUSED = "refused"  # the desk refused it in the incident's state (resolved, ...)
FAILED = "failed"  # the gateway could not apply it (a bug; logged)


@dataclass
class CommandStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    untold: int = 0  # unsigned payloads past the rate limit: counted and logged, no outcome published
    dropped: int = 0  # QoS 0 messages past QUEUE
    connected: bool = False


@dataclass(slots=True)
class _Applying:
    cmd: Command
    ran: bool = False  # the desk's action ran in a detection round (its outcome is in that round)


def guess_id(payload: bytes) -> str | None:
    """The id of a payload that is not a well-formed command, when it has a usable one (the sender may
    then match the outcome to what it sent)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    cid = body.get("id") if isinstance(body, dict) else None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 100 else None


class FleetCommands:
    """The command topic's client and the checks; `bind` gives it the desk it acts through."""

    name = "fleet-commands"

    def __init__(
        self,
        site: Site,
        cfg: FleetConfig,
        topics: Topics,
        store_path: Path,
        key: Ed25519PublicKey,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.max_age = cfg.commands.max_age
        self.skew = cfg.commands.skew
        self.keep = max(KEEP_MIN, 2 * self.max_age + self.skew)
        self.topics = topics
        self.key = key
        self.wake = wake
        self.clock = clock
        self.stats = CommandStats()
        self.client_id = f"meterwatch-fleet-cmd-{topics.site}-{topics.gateway}"[:128]
        self.desk: Desk | None = None
        self._applying: _Applying | None = None
        self._settled: list[tuple[str, float, Owed]] = []  # accepted in this round: (id, at, outcome)
        self._recent: dict[str, float] = {}  # ids accepted in this run whose round may not be stored yet
        self._budget, self._budget_at = float(UNSIGNED_BURST), clock()
        self._queue: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(store_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)
        outbox.create(self._db)

    # ---- wiring ------------------------------------------------------------------------------------------
    def bind(self, desk: Desk) -> None:
        """The desk commands act through: the daemon's kind, calling through `through(detector.call)`."""
        self.desk = desk

    def through(self, call: Call) -> Call:
        """The detector's `call` for the desk of commands: the action runs as the desk gives it; once it has
        run, the command's outcome joins the same round, so both are stored together or not at all."""

        async def wrapped(fn: Callable[[float], T]) -> T:
            applying = self._applying

            def act(now: float) -> T:
                before = self._done_by(applying.cmd) if applying is not None else None
                result = fn(now)  # raises: nothing changed, the caller hears why
                if applying is not None:
                    applying.ran = True
                    detail = f"already {before}" if before else None
                    owed = self._outcome(applying.cmd.id, applying.cmd, ACCEPTED, detail, now)
                    self._settled.append((applying.cmd.id, now, owed))
                    self._recent[applying.cmd.id] = now
                return result

            return await call(act)

        return wrapped

    def _done_by(self, cmd: Command) -> str | None:
        """Who already did what the command asks (the first one counts, as in the HTTP API), or None."""
        view = None if self.desk is None else self.desk.response(cmd.incident)
        if view is None:
            return None
        if cmd.action == "acknowledge" and view.acked_at is not None:
            return f"acknowledged by {view.acked_by}"
        if cmd.action == "on_site" and view.on_site_at is not None:
            return f"on site: {view.on_site_by}"
        return None

    def on_batch(self, batch: Batch, now: float) -> None:
        """Detector hook, after the bridge's: the accepted commands' ids and outcomes, in the round's
        transaction (a round that fails to store keeps them in its batch and stores them with it)."""
        if not self._settled:
            return
        settled, self._settled = self._settled, []
        bound = self.cfg.buffer

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO fleet_commands(id, at, outcome, code) VALUES (?, ?, 'accepted', ?)",
                [(cid, at, ACCEPTED) for cid, at, _ in settled],
            )
            outbox.enqueue(db, [owed for _, _, owed in settled], now, bound)

        batch.writers.append(write)

    # ---- payloads -----------------------------------------------------------------------------------------
    def _outcome(
        self, cid: str | None, cmd: Command | None, code: str, reason: str | None, now: float
    ) -> Owed:
        payload: dict[str, Any] = {
            "v": VERSION,
            "type": "command",
            "site": self.topics.site,
            "gateway": self.topics.gateway,
            "command": cid,
            "action": None if cmd is None else cmd.action,
            "incident": None if cmd is None else cmd.incident,
            "who": None if cmd is None else cmd.who,
            "outcome": "accepted" if code == ACCEPTED else "rejected",
            "code": code,
            "reason": reason,
            "at": now,
        }
        return Owed(self.topics.events, dumps(payload), False)

    # ---- the checks ----------------------------------------------------------------------------------------
    async def handle(self, payload: bytes) -> bool:
        """Check and apply one command, and owe its outcome. True when the broker may be told it was taken
        (False only when the daemon stopped before the desk could run it: the broker sends it again)."""
        now = self.clock()
        self.stats.received += 1
        try:
            body, cmd, sig = parse(payload)
        except BadCommand as exc:
            await self._reject_unsigned(guess_id(payload), None, MALFORMED, str(exc), now)
            return True
        if not verify(body, sig, self.key):
            reason = "bad signature: not signed with the fleet view's key this gateway holds (public_key)"
            await self._reject_unsigned(cmd.id, cmd, BAD_SIGNATURE, reason, now)
            return True
        found = self._target(cmd) or self._age(cmd, now)
        if found is not None:
            await self._reject(cmd, found[0], found[1], now, record=True)
            return True
        seen = self._recent.get(cmd.id)
        if seen is None:
            seen = await asyncio.to_thread(self._seen, cmd.id)
        if seen is not None:
            reason = f"replayed: command {cmd.id} was received before, at {seen:.0f}"
            await self._reject(cmd, REPLAYED, reason, now, record=False)
            return True
        return await self._apply(cmd, now)

    def _target(self, cmd: Command) -> tuple[str, str] | None:
        t = self.topics
        if (cmd.company, cmd.site, cmd.gateway) != (t.company, t.site, t.gateway):
            return WRONG_GATEWAY, (
                f"wrong gateway: the command is for {cmd.company}/{cmd.site}/{cmd.gateway}, this is "
                f"{t.company}/{t.site}/{t.gateway}"
            )
        return None

    def _age(self, cmd: Command, now: float) -> tuple[str, str] | None:
        if cmd.issued_at > now + self.skew:
            return FUTURE, (
                f"issued {cmd.issued_at - now:.0f} s in the future (more than the {self.skew:.0f} s allowed: "
                "is the fleet view's clock right?)"
            )
        if now - cmd.issued_at > self.max_age:
            age = now - cmd.issued_at
            return EXPIRED, f"expired: issued {age:.0f} s ago, max_age is {self.max_age:.0f} s"
        if now > cmd.expires + self.skew:
            return EXPIRED, f"expired: its expires passed {now - cmd.expires:.0f} s ago"
        return None

    async def _apply(self, cmd: Command, now: float) -> bool:
        desk = self.desk
        if desk is None:  # wiring not done: never expected in the daemon
            await self._reject(cmd, FAILED, "the gateway is not ready for commands", now, record=False)
            return True
        applying = self._applying = _Applying(cmd)
        who = cmd.who + VIA
        try:
            if cmd.action == "acknowledge":
                await desk.acknowledge(cmd.incident, who)
            elif cmd.action == "on_site":
                await desk.on_site(cmd.incident, who)
            else:
                await desk.note(cmd.incident, who, cmd.text)
        except DeskError as exc:
            if applying.ran:  # 503: done and kept in memory, its outcome is stored with its round
                log.warning("a fleet command is applied, its round not stored yet", extra=_fields(cmd))
                return True
            if exc.status == 503:  # the daemon is stopping: not taken; the broker sends it again
                return False
            code = {404: UNKNOWN_INCIDENT, 409: REFUSED}.get(exc.status, MALFORMED)
            reason = f"unknown incident {cmd.incident}" if exc.status == 404 else exc.message
            await self._reject(cmd, code, reason, now, record=True)
            return True
        except Exception:
            log.exception("a fleet command failed", extra=_fields(cmd))
            if not applying.ran:
                await self._reject(cmd, FAILED, "the gateway failed to apply it (see its log)", now, True)
            return True
        finally:
            self._applying = None
        self.stats.accepted += 1
        log.info("fleet command applied", extra=_fields(cmd))
        return True

    # ---- rejections ---------------------------------------------------------------------------------------
    async def _reject_unsigned(
        self, cid: str | None, cmd: Command | None, code: str, reason: str, now: float
    ) -> None:
        self._budget = min(float(UNSIGNED_BURST), self._budget + (now - self._budget_at) * UNSIGNED_RATE)
        self._budget_at = now
        if self._budget < 1.0:
            self.stats.untold += 1
            self.stats.rejected += 1
            log.debug("fleet command refused, not told (rate)", extra={"fields": {"code": code}})
            return
        self._budget -= 1.0
        await self._reject_with(cid, cmd, code, reason, now, record=False)

    async def _reject(self, cmd: Command, code: str, reason: str, now: float, record: bool) -> None:
        await self._reject_with(cmd.id, cmd, code, reason, now, record)

    async def _reject_with(
        self, cid: str | None, cmd: Command | None, code: str, reason: str, now: float, record: bool
    ) -> None:
        """The outcome owed, and a signed command's id kept (so it can never be applied later), in one
        transaction."""
        self.stats.rejected += 1
        log.warning(
            "fleet command rejected",
            extra={"fields": {"command": cid or "", "code": code, "reason": reason}},
        )
        owed = self._outcome(cid, cmd, code, reason, now)
        await asyncio.to_thread(self._write, owed, cid if record else None, code, now)
        self.wake()

    def _write(self, owed: Owed, record: str | None, code: str, now: float) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if record is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO fleet_commands(id, at, outcome, code)"
                        " VALUES (?, ?, 'rejected', ?)",
                        (record, now, code),
                    )
                outbox.enqueue(db, [owed], now, self.cfg.buffer)
                db.execute("DELETE FROM fleet_commands WHERE at < ?", (now - self.keep,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _seen(self, cid: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT at FROM fleet_commands WHERE id = ?", (cid,)).fetchone()
        return None if row is None else float(row[0])

    # ---- the component -----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        client = self._client = self._make_client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.cfg.session_expiry)  # commands sent while we are away wait
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        addr = self.cfg.address
        client.connect_async(
            addr.host, addr.port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
        )
        client.loop_start()
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                got = asyncio.create_task(self._queue.get())
                done, _ = await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if got not in done:
                    got.cancel()
                    break
                mid, qos, payload = got.result()
                try:
                    taken = await self.handle(payload)
                except Exception:  # e.g. the store locked past its timeout: not taken, sent again
                    log.exception("cannot handle a fleet command; the broker sends it again")
                    taken = False
                if qos > 0 and taken:
                    client.ack(mid, qos)
        finally:
            stopped.cancel()
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        stop_client(self._client)
        with self._lock:
            self._db.close()
        self.stats.connected = False

    def _make_client(self) -> Client:
        client = gateway_client(self.client_id, self.cfg, self.site.path.parent)
        client.manual_ack_set(True)  # a command is acknowledged once its outcome is stored
        client.on_connect = self._on_connect
        client.on_disconnect = on_disconnect(self._lost)
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if refused(reason, log, "command client", self.cfg.broker):
            return
        self.stats.connected = True
        client.subscribe(self.topics.command, qos=1)
        log.info("taking fleet commands", extra={"fields": {"topic": self.topics.command}})

    def _lost(self, reason: ReasonCode) -> None:
        self.stats.connected = False

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        loop = self._loop
        if loop is None:
            return
        item = (msg.mid, msg.qos, bytes(msg.payload))
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is gone, the broker resends
            loop.call_soon_threadsafe(self._enqueue, item)

    def _enqueue(self, item: tuple[int, int, bytes]) -> None:
        if item[1] == 0 and self._queue.qsize() >= QUEUE:
            self.stats.dropped += 1
            return
        self._queue.put_nowait(item)


def _fields(cmd: Command) -> dict[str, Any]:
    return {"fields": {"command": cmd.id, "action": cmd.action, "incident": cmd.incident, "who": cmd.who}}
