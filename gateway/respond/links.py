"""The signed, expiring links: the dispatch message's 'acknowledge' and 'on site', and the residents'
all-clear's one-tap rating ('vote').

Pure: no I/O except `load_secret`, which reads (or creates once) the secret in the state dir.

Token format (version 1): base64url without '=' padding of

    version   1 byte   = 1
    action    1 byte   1 = ack, 2 = on_site, 3 = vote
    incident  8 bytes  unsigned big-endian
    expires   8 bytes  unsigned big-endian, epoch seconds (whole)
    who_len   1 byte   1..64
    who       who_len bytes, ASCII letters, digits, '-', '_', '.': the person called (ack, on_site),
              or the audience told (vote: a building id, or "residents")
    mac       32 bytes HMAC-SHA256(secret, every byte above)

The alphabet is A-Z a-z 0-9 '-' '_': the token is one URL path segment as it is, never quoted. A token
whose characters are not the canonical encoding of its bytes is malformed, so each token has one spelling.
The first byte names the format: a later version is a new byte, and verify() of this one calls it
malformed. The signature is checked before any field is believed; a token is valid while the clock is
before `expires`.

Errors (LinkError) carry a reason and never the token, the secret or a signature.

Secret: MW_LINK_SECRET (or the name configured in notify.links.secret_env) when set, at least 32
characters, used as its UTF-8 bytes; else the file <state_dir>/link-secret, created once holding 64
lowercase hex characters (32 random bytes) and a newline. The key is that hex *text* (its ASCII bytes,
surrounding whitespace stripped), exactly as if it were given in the environment, so the file's line can
be moved into MW_LINK_SECRET without breaking the links already sent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Action = Literal["ack", "on_site", "vote"]
Reason = Literal["malformed", "forged", "expired", "wrong_action"]

VERSION = 1
SECRET_ENV = "MW_LINK_SECRET"
SECRET_FILE = "link-secret"
MIN_SECRET = 32  # characters of the environment variable; bytes of a secret handed to LinkSigner
WHO_MAX = 64

_ACTION_CODE: dict[str, int] = {"ack": 1, "on_site": 2, "vote": 3}
_CODE_ACTION: dict[int, Action] = {1: "ack", 2: "on_site", 3: "vote"}
_PATH: dict[str, str] = {"ack": "ack", "on_site": "on-site", "vote": "r"}
# the page of each action as an error message names it
_PAGE: dict[str, str] = {"ack": "ack", "on_site": "on-site", "vote": "rating (/r/)"}
_HEAD = struct.Struct(">BBQQB")  # version, action, incident, expires, who_len
_MAC = hashlib.sha256().digest_size
_U64 = 2**64
_WHO = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# The longest token this version makes: longer input is refused before any decoding.
_TOKEN_MAX = math.ceil((_HEAD.size + WHO_MAX + _MAC) * 4 / 3)


class LinkError(Exception):
    """A link that does not stand: `reason` says why; `expires_at` is set when it expired."""

    def __init__(self, reason: Reason, message: str, expires_at: float | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.expires_at = expires_at


class SecretError(Exception):
    """The link secret is unusable (too short, unreadable): the message says what to fix."""


@dataclass(frozen=True)
class LinkClaim:
    """What a verified link says: `who` may do `action` on incident `incident_id` until `expires_at`."""

    action: Action
    incident_id: int
    who: str
    expires_at: float


def _check_action(action: str) -> int:
    code = _ACTION_CODE.get(action)
    if code is None:
        raise ValueError(f"unknown link action {action!r}; expected one of {', '.join(_ACTION_CODE)}")
    return code


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _malformed(why: str) -> LinkError:
    return LinkError("malformed", f"malformed link: {why}")


class LinkSigner:
    """Makes and checks the tokens of the links (dispatch and rating) with one secret."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET:
            raise ValueError(f"link secret must be at least {MIN_SECRET} bytes")
        self._secret = secret
        self._clock = clock

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def make(self, action: Action, incident_id: int, who: str, ttl: float) -> str:
        """A token letting `who` do `action` on incident `incident_id` for `ttl` seconds from now.

        The expiry is rounded up to a whole second. Bad arguments are the caller's bug: ValueError.
        """
        code = _check_action(action)
        if isinstance(incident_id, bool) or not isinstance(incident_id, int) or not 0 <= incident_id < _U64:
            raise ValueError(f"incident id must be an integer in [0, 2**64), got {incident_id!r}")
        if not isinstance(who, str) or not _WHO.fullmatch(who):
            raise ValueError(f"who must be 1-{WHO_MAX} ASCII letters, digits, '-', '_' or '.', got {who!r}")
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        expires = math.ceil(self._clock() + ttl)
        if not 0 <= expires < _U64:
            raise ValueError("expiry out of range")
        who_b = who.encode("ascii")
        body = _HEAD.pack(VERSION, code, incident_id, expires, len(who_b)) + who_b
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    def verify(self, token: str, action: Action) -> LinkClaim:
        """The claim of `token` when it is ours, unaltered, unexpired and for `action`; else LinkError.

        Checked in this order: format (malformed), signature (forged), action (wrong_action), expiry
        (expired). Only LinkError is raised for any token; an unknown `action` argument is a ValueError.
        """
        _check_action(action)
        raw = self._decode(token)
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise LinkError("forged", "link signature does not match: altered, or not made by this gateway")
        _, code, incident_id, expires, _ = _HEAD.unpack_from(body)
        who_b = body[_HEAD.size :]
        got = _CODE_ACTION.get(code)
        if got is None:
            raise _malformed("unknown action code")
        who = who_b.decode("ascii", errors="replace")
        if not _WHO.fullmatch(who):
            raise _malformed("bad person id")
        if got != action:
            raise LinkError("wrong_action", f"link is for the {_PAGE[got]} page, not {_PAGE[action]}")
        now = self._clock()
        if now >= expires:
            raise LinkError(
                "expired",
                f"link expired at {_utc(expires)} ({math.floor(now - expires)}s ago)",
                expires_at=float(expires),
            )
        return LinkClaim(action=got, incident_id=incident_id, who=who, expires_at=float(expires))

    @staticmethod
    def _decode(token: object) -> bytes:
        """The bytes of a canonical version-1 token of consistent length; else malformed."""
        if not isinstance(token, str):
            raise _malformed("not a string")
        if not token:
            raise _malformed("empty")
        if len(token) > _TOKEN_MAX:
            raise _malformed(f"too long ({len(token)} characters)")
        if not _TOKEN.fullmatch(token):
            raise _malformed("characters outside base64url")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _malformed("not base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise _malformed("not the canonical encoding")
        if len(raw) < _HEAD.size + 1 + _MAC:
            raise _malformed(f"too short ({len(raw)} bytes)")
        if raw[0] != VERSION:
            raise _malformed(f"unknown format version {raw[0]}")
        who_len = raw[_HEAD.size - 1]
        if not 1 <= who_len <= WHO_MAX or len(raw) != _HEAD.size + who_len + _MAC:
            raise _malformed("length does not match its fields")
        return raw


def link_url(base_url: str, action: Action, token: str) -> str:
    """The page of `action` for `token` under the gateway's address: <base>/ack/<t>, <base>/on-site/<t> or
    <base>/r/<t> (the rating page)."""
    _check_action(action)
    return f"{base_url.rstrip('/')}/{_PATH[action]}/{token}"


def load_secret(state_dir: Path, env: Mapping[str, str], name: str = SECRET_ENV) -> bytes:
    """The link secret: the environment variable `name` when set, else <state_dir>/link-secret.

    The file is created once (32 random bytes as 64 hex characters, mode 0600): written to a temporary
    file in the same folder and hard-linked into place, which fails when the file exists, so concurrent
    starts all end up reading the one file that won and never a half-written one. Raises SecretError.
    """
    if name in env:
        value = env[name]
        if len(value) < MIN_SECRET:
            raise SecretError(
                f"{name} is set but has {len(value)} characters; expected at least {MIN_SECRET} "
                f"(e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`), "
                f"or unset it to use {state_dir / SECRET_FILE}"
            )
        return value.encode("utf-8")
    path = state_dir / SECRET_FILE
    if not path.exists():
        try:
            _create_secret(path)
        except OSError as e:
            raise SecretError(f"cannot create the link secret {path}: {e.strerror or e}") from None
    return _read_secret(path, name)


def _read_secret(path: Path, name: str) -> bytes:
    try:
        value = path.read_bytes().strip()
    except OSError as e:
        raise SecretError(f"cannot read the link secret {path}: {e.strerror or e}") from None
    if len(value) < MIN_SECRET:
        raise SecretError(
            f"link secret file {path} holds {len(value)} characters; expected at least {MIN_SECRET} "
            f"(64 hex characters as written by the gateway). Delete it to have a new one made (links "
            f"already sent stop working), or set {name}"
        )
    return value


def _create_secret(path: Path) -> None:
    """Writes a new secret to `path` unless another start got there first (then leaves theirs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32).hex().encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic, and never replaces a secret another start already wrote
        except FileExistsError:
            return
        except OSError:
            # A file system without hard links: the replace is still atomic (a reader sees the whole
            # file or none); two starts at the same instant could each keep their own secret.
            if path.exists():
                return
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
