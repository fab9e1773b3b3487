"""The simulated compounds of the fleet simulation: one small site file each (2-3 buildings, two simulated
meters a building on one Modbus TCP line, its own `site.id`), a `fleet:` section at the central broker and
`influx:` at the central store, plus the instrumentation of each gateway's incident store that lets the
run know every fleet message the gateway committed (see `prepare_store`).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.app.detect import store_path
from gateway.config import Site, load_site
from gateway.fleet import outbox
from simulators.ports import free_port

COMPANY = "simco"
TOKEN_ENV = "MW_FLEET_SIM_TOKEN"
TOKEN = "fleet-sim-token-5b7c"  # the desk token of every simulated gateway
PROFILES = (("sdm630", "sdm120"), ("dtsu666", "sdm120"), ("sdm630", "ddsu666"))

# Every fleet outbox row the gateway commits, copied by a trigger in the same transaction as the row (the
# publisher deletes a row once the broker acknowledged it, so the outbox alone cannot say afterwards what was
# owed). No constraint on `seq`: a constraint failing here would abort the gateway's own transaction.
COMMITTED = """
CREATE TABLE IF NOT EXISTS sim_committed(seq INTEGER NOT NULL, topic TEXT NOT NULL, empty INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS sim_committed_copy AFTER INSERT ON fleet_outbox
BEGIN INSERT INTO sim_committed(seq, topic, empty) VALUES (NEW.seq, NEW.topic, NEW.payload = ''); END;
"""


@dataclass(frozen=True)
class Compound:
    index: int
    site_id: str
    gateway: str
    buildings: tuple[str, ...]
    devices: tuple[str, ...]
    path: Path
    state_dir: Path
    http_port: int
    modbus_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def store(self) -> Path:
        return store_path(self.site(), self.state_dir)

    def site(self) -> Site:
        return load_site(self.path, {**os.environ, TOKEN_ENV: TOKEN})

    @property
    def events_topic(self) -> str:
        return f"meterwatch/{COMPANY}/{self.site_id}/events/{self.gateway}"


def site_text(
    index: int,
    buildings: int,
    *,
    modbus_port: int,
    http_port: int,
    broker: str,
    victoria: str,
    receiver: str,
    keepalive: int,
    heartbeat: float,
    poll: float,
) -> str:
    site_id = f"c{index + 1:02d}"
    b_lines, d_lines = [], []
    for b in range(buildings):
        bid = f"B{b + 1}"
        households = 20 + 10 * ((index + b) % 4)
        main, unit = PROFILES[(index + b) % len(PROFILES)]
        domain = f"{{id: {bid}-power, kind: power}}"
        b_lines.append(f"  - {{id: {bid}, households: {households}, domains: [{domain}]}}")
        # the main meter has its own supply (reads 0 V in a cut); the unit meter dies with its circuit
        d_lines.append(
            f"  - {{id: {bid}-main, building: {bid}, domain: {bid}-power, role: main_power, "
            f"households: {households}, line: tcp, unit: {2 * b + 1}, profile: {main}, "
            f"poll_interval: {poll}s}}"
        )
        d_lines.append(
            f"  - {{id: {bid}-unit, building: {bid}, domain: {bid}-power, role: unit_power, households: 1, "
            f"line: tcp, unit: {2 * b + 2}, profile: {unit}, poll_interval: {poll}s, line_powered: true}}"
        )
    nl = "\n"
    # backoff_max: a meter silent through a cut (the unit meters) is probed again within seconds of the
    # supply's return (300 s by default), so the all-clear does not wait for the backoff of a long cut
    return f"""\
site: {{id: {site_id}, name: Simulated compound {index + 1}, timezone: Asia/Shanghai}}
buildings:
{nl.join(b_lines)}
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms, backoff_max: 4s}}
devices:
{nl.join(d_lines)}
rules:
  - {{id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     audiences: [staff, residents], match: {{roles: [main_power, unit_power]}}, for: 2s, clear_for: 3s}}
  - {{id: comm.absent, kind: absence, category: comm_fault, severity: minor, for: 2s, clear_for: 3s}}
http: {{host: 127.0.0.1, port: {http_port}, tokens: [{{name: desk, token: '${{{TOKEN_ENV}}}'}}]}}
incidents: {{heartbeat: 1s}}
influx: {{url: "{victoria}", bucket: fleet, flush_interval: 1s}}
oncall:
  people: [{{id: wang, name: Wang, phone: "13800000001"}}]
  shifts: [{{oncall: wang}}]
notify:
  confirm_delay: {{power_outage: 1h}}
  verify_for: 1s
  retry_max: 1s
  channels:
    - {{name: staff, url: "{receiver}", audiences: [staff], language: zh}}
fleet:
  company: {COMPANY}
  broker: {broker}
  gateway: gw-{site_id}
  keepalive: {keepalive}
  heartbeat: {heartbeat}s
  reconnect_max: 1s
"""


def write_compound(
    directory: Path,
    index: int,
    *,
    broker: str,
    victoria: str,
    receiver: str,
    keepalive: int,
    heartbeat: float,
    poll: float,
) -> Compound:
    """The site file of compound `index` in `directory`/cNN (2 or 3 buildings), its store prepared."""
    buildings = 2 + index % 2
    site_id = f"c{index + 1:02d}"
    folder = directory / site_id
    folder.mkdir(parents=True, exist_ok=True)
    modbus_port, http_port = free_port(), free_port()
    path = folder / "site.yaml"
    path.write_text(
        site_text(
            index,
            buildings,
            modbus_port=modbus_port,
            http_port=http_port,
            broker=broker,
            victoria=victoria,
            receiver=receiver,
            keepalive=keepalive,
            heartbeat=heartbeat,
            poll=poll,
        ),
        encoding="utf-8",
    )
    bids = tuple(f"B{b + 1}" for b in range(buildings))
    compound = Compound(
        index=index,
        site_id=site_id,
        gateway=f"gw-{site_id}",
        buildings=bids,
        devices=tuple(f"{b}-{role}" for b in bids for role in ("main", "unit")),
        path=path,
        state_dir=folder / "state",
        http_port=http_port,
        modbus_port=modbus_port,
    )
    prepare_store(compound.store)
    return compound


def prepare_store(path: Path) -> None:
    """Make the incident store file before the gateway's first start: the fleet outbox's own schema
    (gateway/fleet/outbox.py, as the gateway makes it) and the trigger copying each committed row. The
    gateway adds its other tables to the file as it does to any older store."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        outbox.create(db)
        db.executescript(COMMITTED)
        db.commit()
    finally:
        db.close()


@dataclass(frozen=True)
class Ledger:
    """What one gateway's store says after the run: the events/ ids it committed and what is still owed."""

    epoch: int
    committed: dict[str, int]  # event id on events/ -> times the trigger saw it (1 unless something is wrong)
    retained_rows: int  # rows for the retained incident/ topics (not counted as events)
    pending: int  # rows still in the outbox (not acknowledged by the broker)
    dropped: int  # rows dropped past the buffer bound
    timeline: set[tuple[int, str, float]]  # the incident transitions the store holds


def read_ledger(c: Compound) -> Ledger:
    db = sqlite3.connect(c.store, timeout=30.0)
    try:
        meta = dict(db.execute("SELECT key, value FROM fleet_meta").fetchall())
        epoch = int(meta["epoch"])
        committed: dict[str, int] = {}
        retained = 0
        for seq, topic in db.execute("SELECT seq, topic FROM sim_committed ORDER BY seq"):
            if topic == c.events_topic:
                eid = f"{c.site_id}/{c.gateway}/{epoch}-{seq}"
                committed[eid] = committed.get(eid, 0) + 1
            else:
                retained += 1
        pending = int(db.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])
        rows = db.execute(
            "SELECT incident_id, event, ts FROM timeline WHERE event != 'gateway_down'"
        ).fetchall()
    finally:
        db.close()
    return Ledger(
        epoch=epoch,
        committed=committed,
        retained_rows=retained,
        pending=pending,
        dropped=int(meta.get("dropped", 0)),
        timeline={(int(i), str(e), float(t)) for i, e, t in rows},
    )


def pending(c: Compound) -> int:
    """Rows in the gateway's fleet outbox now (owed, not yet acknowledged by the broker)."""
    db = sqlite3.connect(c.store, timeout=30.0)
    try:
        return int(db.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])
    finally:
        db.close()
