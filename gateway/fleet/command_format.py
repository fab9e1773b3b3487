"""Signed commands from the fleet view (issue 13, item 2): the payload, its canonical encoding, the Ed25519
signature and the key files. Both ends use this module: the fleet view signs (gateway/fleetview/commands.py),
the gateway verifies (gateway/fleet/commands.py); docs/fleet-topics.md says the same for other authors.

A command is one JSON object on `meterwatch/<company>/<site>/command/<gateway>`:

    {"v": 1, "type": "command", "id": "9f1c...", "issued_at": 1796016020, "expires": 1796016320,
     "company": "acme", "site": "north", "gateway": "gw-a", "action": "acknowledge", "incident": 12,
     "who": "王工", "text": "", "sig": "<base64 of the Ed25519 signature>"}

The signature covers the canonical encoding of every other field: the object without `sig`, as JSON with
sorted keys, no white space, non-ASCII characters as themselves, UTF-8. Every value is a string or an integer
(no floats, whose text differs between languages), so any JSON library can make the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = 1
ACTIONS = ("acknowledge", "on_site", "note")
MAX_PAYLOAD = 8192  # bytes: a command is a few hundred; anything larger is not one
MAX_ID = 100
MAX_WHO = 64
MAX_TEXT = 2000
PRIVATE_NAME, PUBLIC_NAME = "fleet-cmd.key", "fleet-cmd.pub"
FIELDS: dict[str, type] = {
    "v": int,
    "type": str,
    "id": str,
    "issued_at": int,
    "expires": int,
    "company": str,
    "site": str,
    "gateway": str,
    "action": str,
    "incident": int,
    "who": str,
    "text": str,
}


class BadCommand(ValueError):
    """A payload that is not a well-formed command; `field` names the culprit (None: the whole payload)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    issued_at: int
    expires: int
    company: str
    site: str
    gateway: str
    action: str
    incident: int
    who: str
    text: str

    def body(self) -> dict[str, Any]:
        """The signed fields (everything but `sig`)."""
        return {
            "v": VERSION,
            "type": "command",
            "id": self.id,
            "issued_at": self.issued_at,
            "expires": self.expires,
            "company": self.company,
            "site": self.site,
            "gateway": self.gateway,
            "action": self.action,
            "incident": self.incident,
            "who": self.who,
            "text": self.text,
        }


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes a signature covers: `body` without `sig`, sorted keys, no white space, UTF-8."""
    signed = {k: v for k, v in body.items() if k != "sig"}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def new_command(
    company: str,
    site: str,
    gateway: str,
    action: str,
    incident: int,
    who: str,
    text: str,
    now: float,
    ttl: int,
) -> Command:
    issued = int(now)
    cid = uuid.uuid4().hex
    return Command(cid, issued, issued + ttl, company, site, gateway, action, incident, who, text)


def sign(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    """The payload to publish."""
    body = cmd.body()
    body["sig"] = base64.b64encode(key.sign(canonical(body))).decode("ascii")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise BadCommand(f"malformed: missing field {name}", name)
    value = body[name]
    kind = FIELDS[name]
    # bool is an int to Python, never to a command
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = "a whole number" if kind is int else "a string"
        raise BadCommand(f"malformed field {name}: {json.dumps(value)[:40]} is not {expected}", name)
    return value


def parse(payload: bytes) -> tuple[dict[str, Any], Command, bytes]:
    """The payload as (its JSON object, the command, the signature), each field checked for its type and
    range; BadCommand says what is wrong. The signature itself is checked by `verify`."""
    if len(payload) > MAX_PAYLOAD:
        raise BadCommand(f"malformed: {len(payload)} bytes, a command is at most {MAX_PAYLOAD}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadCommand(f"malformed: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadCommand("malformed: expected a JSON object")
    values = {name: _field(body, name) for name in FIELDS}
    if values["v"] != VERSION:
        raise BadCommand(f"malformed field v: version {values['v']}, this gateway reads {VERSION}", "v")
    if values["type"] != "command":
        raise BadCommand(f"malformed field type: {values['type'][:40]!r}, expected 'command'", "type")
    if not 1 <= len(values["id"]) <= MAX_ID:
        raise BadCommand(f"malformed field id: expected 1 to {MAX_ID} characters", "id")
    if values["action"] not in ACTIONS:
        names = ", ".join(ACTIONS)
        raise BadCommand(
            f"malformed field action: {values['action'][:40]!r}, expected one of {names}", "action"
        )
    if values["incident"] < 1:
        raise BadCommand("malformed field incident: expected an incident id from 1", "incident")
    who = values["who"].strip()
    if not who or len(who) > MAX_WHO or not who.isprintable():
        raise BadCommand(f"malformed field who: expected 1 to {MAX_WHO} printable characters", "who")
    if len(values["text"]) > MAX_TEXT:
        raise BadCommand(f"malformed field text: more than {MAX_TEXT} characters", "text")
    if values["action"] == "note" and not values["text"].strip():
        raise BadCommand("malformed field text: a note needs its words", "text")
    sig = body.get("sig")
    if not isinstance(sig, str):
        raise BadCommand("malformed field sig: expected the base64 Ed25519 signature", "sig")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise BadCommand("malformed field sig: not base64", "sig") from None
    cmd = Command(
        values["id"], values["issued_at"], values["expires"], values["company"], values["site"],
        values["gateway"], values["action"], values["incident"], who, values["text"],
    )  # fmt: skip
    return body, cmd, raw


def verify(body: dict[str, Any], signature: bytes, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(signature, canonical(body))
    except InvalidSignature:
        return False
    return True


# ---- key files ---------------------------------------------------------------------------------------
class KeyFileError(OSError):
    """A key file that cannot be used: one line naming the file and what was expected."""


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(exc.errno, f"cannot read the public key: {exc.strerror}", str(path)) from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            0, "not an Ed25519 public key in PEM (make one with `meterwatch fleet keygen DIR`)", str(path)
        )
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(exc.errno, f"cannot read the private key: {exc.strerror}", str(path)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            0,
            "not an unencrypted Ed25519 private key in PEM (make one with `meterwatch fleet keygen DIR`)",
            str(path),
        )
    return key


def keygen(directory: Path) -> tuple[Path, Path]:
    """A new key pair in `directory`: fleet-cmd.key (the fleet view's, owner-only) and fleet-cmd.pub (each
    gateway's). Refuses to replace either (FileExistsError): a new key locks out every gateway that has the
    old public key."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    for p in (private, public):
        if p.exists():
            raise FileExistsError(0, "exists already; remove it first or choose another directory", str(p))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
