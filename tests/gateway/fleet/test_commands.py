"""Acknowledge from afar (issue 13, item 2), the gateway's side: signed commands on command/<gateway> with the
real daemon (simulated meters), a real mosquitto, and a subscriber standing in for the fleet view.

A signed acknowledge goes through the desk as the HTTP API's does (acknowledged_at set, the timeline says
"via fleet", the acknowledged transition published, then the accepted outcome); every way a command is
refused gets its outcome with a reason and changes nothing (bad signature, another key, expired, from the
future, replayed, also after a restart, another gateway, an unknown or resolved incident, malformed JSON or
field); commands are off by default. Everything is waited for on the subscriber's messages.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import ConfigError, load_site
from gateway.fleet.command_format import (
    BadCommand,
    Command,
    KeyFileError,
    canonical,
    keygen,
    load_private_key,
    load_public_key,
    new_command,
    parse,
    sign,
    verify,
)
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.conftest import COMPANY, GATEWAY, FleetSite, Subscriber, fleet_site, topic

ONCALL = """
oncall:
  people: [{id: wang, name: Wang, phone: "13800000001"}]
  shifts: [{oncall: wang}]
"""
TIMEOUT = 60.0  # a time-out says an answer never came, it is no speed claim
SITE = "livetest"


# ---- the format -----------------------------------------------------------------------------------------
def test_a_signed_command_parses_and_verifies_and_any_change_breaks_it() -> None:
    key = Ed25519PrivateKey.generate()
    cmd = new_command(COMPANY, SITE, GATEWAY, "note", 7, "王工", "电房已断电", 1796016020.7, 120)
    body, parsed, sig = parse(sign(cmd, key))
    assert parsed == cmd and cmd.issued_at == 1796016020 and cmd.expires == 1796016140
    assert verify(body, sig, key.public_key())
    assert not verify(body, sig, Ed25519PrivateKey.generate().public_key()), "another key"
    for name, value in (("incident", 8), ("who", "李工"), ("gateway", "gw-b"), ("expires", 1796099999)):
        assert not verify({**body, name: value}, sig, key.public_key()), name
    # canonical: sorted keys, no spaces, UTF-8 as itself, the signature left out
    raw = canonical(body)
    assert raw.startswith(b'{"action":"note","company":"acme",') and b" " not in raw
    assert "王工".encode() in raw and b"sig" not in raw
    assert canonical(dict(reversed(list(body.items())))) == raw


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"incident": "7"}, "incident", "not a whole number"),
        ({"incident": True}, "incident", "not a whole number"),
        ({"issued_at": 1796016020.5}, "issued_at", "not a whole number"),
        ({"action": "resolve"}, "action", "expected one of acknowledge, on_site, note"),
        ({"who": ""}, "who", "printable"),
        ({"text": ""}, "text", "a note needs its words"),
        ({"v": 2}, "v", "version 2"),
        ({"sig": "@@"}, "sig", "not base64"),
    ],
)
def test_a_malformed_field_is_named(change: dict[str, Any], field: str, words: str) -> None:
    key = Ed25519PrivateKey.generate()
    body = json.loads(sign(new_command(COMPANY, SITE, GATEWAY, "note", 7, "wang", "x", 1e9, 60), key))
    with pytest.raises(BadCommand) as err:
        parse(json.dumps({**body, **change}).encode())
    assert err.value.field == field and words in str(err.value)


def test_missing_fields_and_not_json() -> None:
    with pytest.raises(BadCommand, match="not JSON"):
        parse(b"{not json")
    with pytest.raises(BadCommand, match="missing field id"):
        parse(b'{"v": 1, "type": "command"}')
    with pytest.raises(BadCommand, match="at most 8192"):
        parse(b" " * 9000)


def test_keygen_makes_a_pair_and_never_replaces_one(tmp_path: Path) -> None:
    private, public = keygen(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_private_key(private)
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(FileExistsError):
        keygen(tmp_path / "keys")
    assert load_private_key(private).private_bytes_raw() == key.private_bytes_raw(), "the old key stays"
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(private)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "nothing.pub")


def test_commands_are_off_by_default_and_need_a_key(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = fleet_site(tmp_path, mosquitto)
    assert site.site.config.fleet is not None and site.site.config.fleet.commands.enabled is False
    path = site.site_path
    path.write_text(
        path.read_text("utf-8").replace("  buffer: ", "  commands: {enabled: true}\n  buffer: "), "utf-8"
    )
    with pytest.raises(ConfigError, match="public_key"):
        load_site(path)


# ---- with the daemon ------------------------------------------------------------------------------------
class Sender:
    """The fleet view's side, as a test: signs (or not) and publishes commands at QoS 1."""

    def __init__(self, broker: Mosquitto, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id="cmd-sender", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def command(self, action: str, incident: int, **change: Any) -> Command:
        cmd = new_command(
            COMPANY, SITE, GATEWAY, action, incident, "王工", change.pop("text", ""), time.time(), 120
        )
        fields = {**cmd.body(), **change}
        return Command(**{k: fields[k] for k in Command.__dataclass_fields__})

    def send(self, cmd: Command, key: Ed25519PrivateKey | None = None) -> str:
        self.raw(sign(cmd, key or self.key))
        return cmd.id

    def raw(self, payload: bytes) -> None:
        info = self.client.publish(topic("command"), payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def outcomes(sub: Subscriber) -> list[dict[str, Any]]:
    return [e for e in sub.events() if e["type"] == "command"]


def outcome(sub: Subscriber, cid: str | None, result: str = "accepted") -> dict[str, Any]:
    """The first outcome `result` (accepted or rejected) of command `cid` (None: a payload without one)."""
    found = sub.wait(
        lambda: [e for e in outcomes(sub) if e["command"] == cid and e["outcome"] == result],
        f"the outcome {result} of {cid}",
        TIMEOUT,
    )
    return dict(found[0])


def rejected(sub: Subscriber, cid: str | None, code: str, words: str) -> dict[str, Any]:
    got = outcome(sub, cid, "rejected")
    assert got["code"] == code, got
    assert words in got["reason"], got
    return got


def commands_site(directory: Path, broker: Mosquitto, public: Path, enabled: bool = True) -> FleetSite:
    directory.mkdir(parents=True, exist_ok=True)
    site = fleet_site(directory, broker)
    path = site.site_path
    text = path.read_text("utf-8")
    if enabled:
        line = f"  commands: {{enabled: true, public_key: {public}, max_age: 60s, skew: 10s}}\n"
        text = text.replace("  buffer: ", line + "  buffer: ")
    path.write_text(text + ONCALL, encoding="utf-8")
    return FleetSite(directory, path)


def open_incident(site: FleetSite, title: str) -> int:
    return int(site.api("/api/incidents", {"code": "003", "title": title, "buildings": ["B1"]})["id"])


def test_commands_from_afar(tmp_path: Path, mosquitto: Mosquitto, subscriber_factory: Any) -> None:
    private, public = keygen(tmp_path / "keys")
    key = load_private_key(private)
    sub = subscriber_factory()
    sender = Sender(mosquitto, key)
    site = commands_site(tmp_path / "site", mosquitto, public)
    try:
        with site:
            commands = site.fleet.commands
            assert commands is not None and site.daemon.rt is not None
            assert commands in site.daemon.rt.components
            inc = open_incident(site, "配电房跳闸")
            sub.wait(
                lambda: [e for e in sub.transitions(inc) if e["transition"] == "dispatched"], "dispatched"
            )
            # the gateway subscribes once connected: a command sent before might find no subscription
            sub.wait(lambda: commands.stats.connected, "the command client connected")

            ack_cmd = sender.command("acknowledge", inc)
            ack = sender.send(ack_cmd)
            got = outcome(sub, ack)
            assert got["code"] == "accepted" and got["reason"] is None
            assert got["action"] == "acknowledge" and got["incident"] == inc and got["who"] == "王工"
            assert got["id"].startswith(f"{SITE}/{GATEWAY}/") and got["site"] == SITE
            # through the desk: acknowledged as by the HTTP API, the timeline says it came via the fleet
            acked = [e for e in sub.transitions(inc) if e["transition"] == "acknowledged"]
            assert len(acked) == 1 and acked[0]["detail"] == "by 王工 via fleet"
            assert acked[0]["incident"]["acknowledged_at"] == acked[0]["at"]
            events = sub.events()
            assert events.index(acked[0]) < events.index(got), "the outcome never overtakes the transition"
            response = site.api(f"/api/incidents/{inc}/response")
            assert response["acked_by"] == "王工 via fleet" and response["acked_ts"] == acked[0]["at"]

            on_site = sender.send(sender.command("on_site", inc))
            assert outcome(sub, on_site)["reason"] is None
            note_cmd = sender.command("note", inc, text="已到配电房，正在排查")
            note = sender.send(note_cmd)
            outcome(sub, note)
            response = site.api(f"/api/incidents/{inc}/response")
            assert response["on_site_by"] == "王工 via fleet"
            mine = [n["text"] for n in response["notes"] if n["who"] == "王工 via fleet"]
            assert mine == ["已到配电房，正在排查"]
            # a second acknowledgement is taken (the first counts), and says so
            again = outcome(sub, sender.send(sender.command("acknowledge", inc)))
            assert "already acknowledged by 王工 via fleet" in again["reason"]

            # refused, each with its reason, and nothing changes
            sender.send(ack_cmd)  # the same bytes again (Ed25519 signatures are deterministic)
            rejected(sub, ack, "replayed", f"command {ack} was received before")
            tampered = json.loads(sign(sender.command("note", inc, text="a"), key))
            tampered["text"] = "b"
            sender.raw(json.dumps(tampered).encode())
            rejected(sub, tampered["id"], "bad_signature", "bad signature")
            other = sender.send(sender.command("note", inc, text="x"), key=Ed25519PrivateKey.generate())
            rejected(sub, other, "bad_signature", "not signed with the fleet view's key")
            old = sender.send(sender.command("acknowledge", inc, issued_at=int(time.time()) - 600))
            rejected(sub, old, "expired", "max_age is 60 s")
            past = sender.send(sender.command("acknowledge", inc, expires=int(time.time()) - 60))
            rejected(sub, past, "expired", "its expires passed")
            future = sender.send(sender.command("acknowledge", inc, issued_at=int(time.time()) + 600))
            rejected(sub, future, "future", "in the future")
            elsewhere = sender.send(sender.command("acknowledge", inc, gateway="gw-b"))
            rejected(sub, elsewhere, "wrong_gateway", f"for {COMPANY}/{SITE}/gw-b, this is")
            unknown = sender.send(sender.command("acknowledge", 999))
            rejected(sub, unknown, "unknown_incident", "unknown incident 999")
            sender.raw(b"{not json")
            rejected(sub, None, "malformed", "not JSON")
            sender.raw(b'{"id": "bad-field-1", "v": 1, "type": "command"}')
            rejected(sub, "bad-field-1", "malformed", "missing field issued_at")
            after = site.api(f"/api/incidents/{inc}/response")
            for field in ("acked_ts", "acked_by", "on_site_ts", "on_site_by", "notes"):
                assert after[field] == response[field], f"a refused command changed {field}"

            # the gateway stays the authority: a resolved incident is not acknowledged
            closed = open_incident(site, "电梯困人")
            site.api(f"/api/incidents/{closed}/resolve", {"note": "已处理"})
            late = sender.send(sender.command("acknowledge", closed))
            rejected(sub, late, "refused", f"incident {closed} is resolved")
            assert commands.stats.accepted == 4 and commands.stats.rejected >= 11
            # and /metrics counts them by outcome
            with urllib.request.urlopen(site.daemon.url + "/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            assert "meterwatch_fleet_commands_connected 1.0" in metrics
            assert 'meterwatch_fleet_commands_total{outcome="accepted"} 4.0' in metrics
            rej = [
                ln
                for ln in metrics.splitlines()
                if ln.startswith('meterwatch_fleet_commands_total{outcome="rejected"}')
            ]
            assert rej and float(rej[0].split()[1]) == commands.stats.rejected, rej

        # replayed after a restart: the ids are kept in the incident store
        restarted = FleetSite(site.directory, site.site_path)
        with restarted:
            again_commands = restarted.fleet.commands
            assert again_commands is not None
            sub.wait(lambda: again_commands.stats.connected, "the command client connected again")
            sender.send(note_cmd)
            rejected(sub, note, "replayed", "was received before")
            assert again_commands.stats.accepted == 0
    finally:
        sender.close()
    # each outcome once by event id
    ids = [e["id"] for e in outcomes(sub)]
    assert len(ids) == len(set(ids))


def test_commands_off_the_gateway_does_not_listen(
    tmp_path: Path, mosquitto: Mosquitto, subscriber_factory: Any
) -> None:
    private, public = keygen(tmp_path / "keys")
    sub = subscriber_factory()
    sender = Sender(mosquitto, load_private_key(private))
    site = commands_site(tmp_path / "site", mosquitto, public, enabled=False)
    try:
        with site:
            assert site.fleet.commands is None
            assert site.daemon.rt is not None
            assert not [c for c in site.daemon.rt.components if c.name == "fleet-commands"]
            inc = open_incident(site, "配电房跳闸")
            sub.wait(
                lambda: [e for e in sub.transitions(inc) if e["transition"] == "dispatched"], "dispatched"
            )
            sender.send(sender.command("acknowledge", inc))
            # three heartbeats later (1 s apart): no answer, not acknowledged
            beats = len(sub.all(topic("gateway")))
            sub.wait(lambda: len(sub.all(topic("gateway"))) >= beats + 3, "three more heartbeats", TIMEOUT)
            assert outcomes(sub) == []
            assert site.api(f"/api/incidents/{inc}/response")["acked_at"] is None
    finally:
        sender.close()
