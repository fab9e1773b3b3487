"""The signed, expiring links of the dispatch message: tokens, their checks, the secret, the config."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import random
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError

import gateway.respond.links as links_mod
from gateway.config.notify import Links, NotifyConfig
from gateway.respond.links import (
    LinkClaim,
    LinkError,
    LinkSigner,
    SecretError,
    link_url,
    load_secret,
)

SECRET = b"k" * 16 + b"0123456789abcdef"  # 32 bytes
OTHER = b"o" * 32
T0 = 1772417100.0  # 2026-03-02 02:05 UTC
HEAD = struct.Struct(">BBQQB")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer(clock: Clock | None = None, secret: bytes = SECRET) -> LinkSigner:
    return LinkSigner(secret, clock=clock or Clock())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def reason_of(fn: Callable[[], object]) -> LinkError:
    with pytest.raises(LinkError) as info:
        fn()
    return info.value


def assert_no_secret(err: Exception, token: str = "") -> None:
    text = str(err)
    assert SECRET.decode() not in text
    if token:
        assert token not in text
        mac = unb64(token)[-32:] if len(token) > 43 else b""
        if mac:
            assert mac.hex() not in text and b64(mac) not in text


# --- round trip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["ack", "on_site"])
@pytest.mark.parametrize("who", ["alice", "w.zhang-2_b", "x", "A" * 64])
@pytest.mark.parametrize("incident", [0, 1, 42, 2**63 - 1, 2**64 - 1])
def test_round_trip(action: str, who: str, incident: int) -> None:
    s = signer()
    token = s.make(action, incident, who, ttl=3600)  # type: ignore[arg-type]
    claim = s.verify(token, action)  # type: ignore[arg-type]
    assert claim == LinkClaim(action=action, incident_id=incident, who=who, expires_at=T0 + 3600)  # type: ignore[arg-type]
    assert quote(token, safe="") == token
    assert "=" not in token


def test_expiry_is_whole_seconds_rounded_up() -> None:
    s = signer(Clock(1000.25))
    assert s.verify(s.make("ack", 1, "a", ttl=10), "ack").expires_at == 1011.0


def test_same_fields_same_token_other_secret_other_token() -> None:
    a, b = signer().make("ack", 7, "bob", 60), signer().make("ack", 7, "bob", 60)
    assert a == b
    assert signer(secret=OTHER).make("ack", 7, "bob", 60) != a
    assert signer().make("on_site", 7, "bob", 60) != a


# --- forged -------------------------------------------------------------------------------------------


def test_another_secret_is_forged() -> None:
    token = signer(secret=OTHER).make("ack", 5, "alice", 600)
    err = reason_of(lambda: signer().verify(token, "ack"))
    assert err.reason == "forged"
    assert_no_secret(err, token)


def _resign_body(token: str, **change: int | bytes) -> str:
    """The token with fields of its body changed and its original signature kept."""
    raw = unb64(token)
    version, action, incident, expires, _ = HEAD.unpack_from(raw)
    who = raw[HEAD.size : -32]
    fields = {"version": version, "action": action, "incident": incident, "expires": expires, "who": who}
    fields.update(change)
    who_b = fields["who"]
    assert isinstance(who_b, bytes)
    head = HEAD.pack(fields["version"], fields["action"], fields["incident"], fields["expires"], len(who_b))
    return b64(head + who_b + raw[-32:])


@pytest.mark.parametrize(
    "change",
    [
        {"action": 2},
        {"incident": 43},
        {"incident": 42 + 2**32},
        {"expires": int(T0) + 10 * 86400},
        {"who": b"mallory"},
        {"who": b"alicf"},
        {"who": b"alice."},
    ],
    ids=["action", "incident", "incident-high", "expires", "who", "who-one-char", "who-longer"],
)
def test_every_field_tampered_is_forged(change: dict[str, int | bytes]) -> None:
    s = signer()
    token = s.make("ack", 42, "alice", 3600)
    forged = _resign_body(token, **change)
    assert forged != token
    err = reason_of(lambda: s.verify(forged, "ack"))
    assert err.reason == "forged"
    assert_no_secret(err, forged)


def test_every_byte_flipped_is_refused() -> None:
    """Flipping any bit anywhere: forged, except the version and length bytes, which break the format."""
    s = signer()
    token = s.make("on_site", 42, "alice", 3600)
    raw = bytearray(unb64(token))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= bit
            err = reason_of(lambda bad=bad: s.verify(b64(bytes(bad)), "on_site"))  # type: ignore[misc]
            want = "malformed" if i in (0, HEAD.size - 1) else "forged"
            assert err.reason == want, (i, bit, err)


def test_signature_tampered_is_forged() -> None:
    s = signer()
    raw = unb64(s.make("ack", 1, "bob", 60))
    for mac in (bytes(32), raw[-32:][::-1], hmac.new(OTHER, raw[:-32], hashlib.sha256).digest()):
        assert reason_of(lambda mac=mac: s.verify(b64(raw[:-32] + mac), "ack")).reason == "forged"  # type: ignore[misc]


def test_signature_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(links_mod.hmac, "compare_digest", spy)
    s = signer()
    s.verify(s.make("ack", 1, "bob", 60), "ack")
    assert len(calls) == 1 and len(calls[0][0]) == 32


# --- expired, wrong action ----------------------------------------------------------------------------


def test_expired_with_the_time() -> None:
    clock = Clock(T0)
    s = signer(clock)
    token = s.make("ack", 9, "alice", ttl=60)
    clock.now = T0 + 59.9
    assert s.verify(token, "ack").incident_id == 9
    clock.now = T0 + 60
    err = reason_of(lambda: s.verify(token, "ack"))
    assert err.reason == "expired"
    assert err.expires_at == T0 + 60
    assert "2026-03-02T02:06:00+00:00" in str(err)
    clock.now = T0 + 7 * 86400
    err = reason_of(lambda: s.verify(token, "ack"))
    assert err.reason == "expired" and err.expires_at == T0 + 60
    assert_no_secret(err, token)


@pytest.mark.parametrize(("made", "used"), [("ack", "on_site"), ("on_site", "ack")])
def test_wrong_action(made: str, used: str) -> None:
    s = signer()
    token = s.make(made, 3, "alice", 60)  # type: ignore[arg-type]
    err = reason_of(lambda: s.verify(token, used))  # type: ignore[arg-type]
    assert err.reason == "wrong_action"
    assert "on-site" in str(err) and "ack" in str(err)
    assert_no_secret(err, token)


def test_wrong_action_checked_before_expiry() -> None:
    clock = Clock()
    s = signer(clock)
    token = s.make("ack", 3, "alice", 60)
    clock.now += 3600
    assert reason_of(lambda: s.verify(token, "on_site")).reason == "wrong_action"
    assert reason_of(lambda: s.verify(token, "ack")).reason == "expired"


# --- malformed ----------------------------------------------------------------------------------------


def _good() -> str:
    return signer().make("ack", 42, "alice", 3600)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "A",
        "AAAA",
        "!!!!",
        "not a token",
        "abc/def",
        "%41%41",
        "ä" * 80,
        "A" * 10_000,
        "A" * 1_000_000,
        _good()[:-1],
        _good()[:-5],
        _good()[:20],
        _good() + "A",
        _good() + "AAAA",
        _good() + "=",
        _good() + "==",
        _good().replace("-", "+").replace("_", "/") + "+/",
        " " + _good(),
        _good() + "\n",
        b64(bytes(100)),
        b64(bytes(51 + 5)),
        b64(b"\x01" + bytes(200)),
    ],
)
def test_malformed(token: str) -> None:
    err = reason_of(lambda: signer().verify(token, "ack"))
    assert err.reason == "malformed"
    assert str(err).startswith("malformed link")
    assert_no_secret(err)
    assert token not in str(err) or len(token) < 5


@pytest.mark.parametrize("token", [None, b"AAAA", 42, ["x"]])
def test_not_a_string_is_malformed(token: object) -> None:
    assert reason_of(lambda: signer().verify(token, "ack")).reason == "malformed"  # type: ignore[arg-type]


def test_non_canonical_spelling_is_malformed() -> None:
    """The spare bits of the last character: another spelling of the same bytes is refused."""
    s = signer()
    token = s.make("ack", 42, "alice", 3600)  # 56 bytes: the last character carries 2 spare bits
    assert len(unb64(token)) % 3 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [
        t
        for c in alphabet
        if (t := token[:-1] + c) != token and unb64(t) == unb64(token)  # same bytes, other spelling
    ]
    assert twins
    for twin in twins:
        assert reason_of(lambda twin=twin: s.verify(twin, "ack")).reason == "malformed"  # type: ignore[misc]


def test_unknown_version_is_malformed_even_when_signed() -> None:
    raw = unb64(_good())
    body = bytes([2]) + raw[1:-32]
    token = b64(body + hmac.new(SECRET, body, hashlib.sha256).digest())
    err = reason_of(lambda: signer().verify(token, "ack"))
    assert err.reason == "malformed" and "version" in str(err)


def test_signed_but_unknown_action_or_bad_who_is_malformed() -> None:
    def sign(action: int, who: bytes) -> str:
        body = HEAD.pack(1, action, 1, int(T0) + 60, len(who)) + who
        return b64(body + hmac.new(SECRET, body, hashlib.sha256).digest())

    assert signer().verify(sign(1, b"ok"), "ack").who == "ok"  # the helper makes good tokens
    assert reason_of(lambda: signer().verify(sign(0, b"ok"), "ack")).reason == "malformed"  # 3 is vote
    for who in (b"a/b", b"a b", "é".encode(), b"\x00"):
        assert reason_of(lambda who=who: signer().verify(sign(1, who), "ack")).reason == "malformed"  # type: ignore[misc]


def test_random_input_raises_only_link_error() -> None:
    rng = random.Random(20260302)
    s = signer()
    good = unb64(_good())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. %é"
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            token = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
        elif kind == 1:
            token = b64(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 160))))
        else:
            raw = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            token = b64(bytes(raw[: rng.randrange(len(raw) + 1)]))
        try:
            s.verify(token, "ack")
        except LinkError as e:
            assert e.reason in ("malformed", "forged")
        else:
            pytest.fail(f"accepted {token!r}")


# --- bad arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("nope", 1, "a", 60),
        ("ack", -1, "a", 60),
        ("ack", 2**64, "a", 60),
        ("ack", True, "a", 60),
        ("ack", 1.5, "a", 60),
        ("ack", 1, "", 60),
        ("ack", 1, "a/b", 60),
        ("ack", 1, "a b", 60),
        ("ack", 1, "张三", 60),
        ("ack", 1, "a" * 65, 60),
        ("ack", 1, "a", 0),
        ("ack", 1, "a", -5),
        ("ack", 1, "a", float("nan")),
        ("ack", 1, "a", float("inf")),
    ],
)
def test_make_rejects_bad_arguments(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        signer().make(*args)  # type: ignore[arg-type]


def test_verify_rejects_an_unknown_action_argument() -> None:
    with pytest.raises(ValueError, match="unknown link action"):
        signer().verify(_good(), "resolve")  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [b"", b"x" * 31, "y" * 40])
def test_signer_refuses_a_short_secret(secret: object) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        LinkSigner(secret)  # type: ignore[arg-type]


# --- link_url -----------------------------------------------------------------------------------------


def test_link_url() -> None:
    assert link_url("https://gw.example.org", "ack", "TOK") == "https://gw.example.org/ack/TOK"
    assert link_url("https://gw.example.org", "on_site", "TOK") == "https://gw.example.org/on-site/TOK"
    assert link_url("http://10.0.0.2:8080/gw/", "on_site", "T") == "http://10.0.0.2:8080/gw/on-site/T"
    with pytest.raises(ValueError):
        link_url("https://gw.example.org", "resolve", "TOK")  # type: ignore[arg-type]


# --- load_secret ----------------------------------------------------------------------------------------


def test_load_secret_creates_the_file_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_secret(state, {})
    path = state / "link-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    assert bytes.fromhex(text.strip())  # 64 hex characters
    assert first == text.strip().encode()
    assert sorted(p.name for p in state.iterdir()) == ["link-secret"]  # no temporary file left
    before = path.stat().st_mtime_ns
    assert load_secret(state, {}) == first
    assert path.read_text() == text and path.stat().st_mtime_ns == before
    LinkSigner(first)  # long enough to sign with
    assert load_secret(tmp_path / "other", {}) != first  # random, not a constant


def test_secret_file_and_environment_are_interchangeable(tmp_path: Path) -> None:
    """The file's line moved into MW_LINK_SECRET keeps the links already sent valid."""
    from_file = load_secret(tmp_path, {})
    line = (tmp_path / "link-secret").read_text().strip()
    from_env = load_secret(tmp_path / "elsewhere", {"MW_LINK_SECRET": line})
    assert from_env == from_file
    token = LinkSigner(from_file, clock=Clock()).make("ack", 1, "a", 60)
    assert LinkSigner(from_env, clock=Clock()).verify(token, "ack").incident_id == 1


def test_load_secret_prefers_the_environment(tmp_path: Path) -> None:
    value = "e" * 40
    assert load_secret(tmp_path, {"MW_LINK_SECRET": value}) == value.encode()
    assert not (tmp_path / "link-secret").exists()  # nothing written when the environment has it
    from_file = load_secret(tmp_path, {})
    assert load_secret(tmp_path, {"MW_LINK_SECRET": value}) == value.encode() != from_file
    assert load_secret(tmp_path, {"OTHER_NAME": "f" * 32}, name="OTHER_NAME") == b"f" * 32
    assert load_secret(tmp_path, {"MW_LINK_SECRET": value}, name="OTHER_NAME") == from_file


@pytest.mark.parametrize("value", ["", "short", "s" * 31])
def test_load_secret_rejects_a_short_environment_secret(tmp_path: Path, value: str) -> None:
    with pytest.raises(SecretError) as info:
        load_secret(tmp_path, {"MW_LINK_SECRET": value})
    msg = str(info.value)
    assert "MW_LINK_SECRET" in msg and "at least 32" in msg and f"has {len(value)} characters" in msg
    if value:
        assert value not in msg
    assert not (tmp_path / "link-secret").exists()


def test_load_secret_rejects_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / "link-secret").write_text("abc\n")
    with pytest.raises(SecretError) as info:
        load_secret(tmp_path, {})
    assert str(tmp_path / "link-secret") in str(info.value) and "abc" not in str(info.value)
    assert (tmp_path / "link-secret").read_text() == "abc\n"  # never silently replaced


def test_load_secret_unwritable_state_dir(tmp_path: Path) -> None:
    # a state "dir" that is a file cannot hold the secret, whoever runs the test (root writes anywhere else)
    state = tmp_path / "not-a-dir"
    state.write_text("x")
    with pytest.raises(SecretError, match="cannot create the link secret"):
        load_secret(state, {})


def test_two_threads_get_the_same_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every thread passes the 'no file yet' check and makes its own secret before any is written: the
    first written wins and every thread returns it."""
    threads = 8
    gate = threading.Barrier(threads, timeout=2)
    real = links_mod.secrets.token_bytes

    def slow_token_bytes(n: int) -> bytes:
        # An implementation that serialises the creation never gets every thread here: it waits out the
        # timeout once and goes on.
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait()
        return real(n)

    monkeypatch.setattr(links_mod.secrets, "token_bytes", slow_token_bytes)
    lock = threading.Lock()
    for round_ in range(3):
        gate.reset()
        state = tmp_path / f"s{round_}"
        results: list[bytes | BaseException] = []

        def start(state: Path = state, results: list[bytes | BaseException] = results) -> None:
            try:
                got: bytes | BaseException = load_secret(state, {})
            except BaseException as e:  # reported below
                got = e
            with lock:
                results.append(got)

        workers = [threading.Thread(target=start) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        assert len(results) == threads
        assert all(isinstance(r, bytes) for r in results), results
        assert len(set(results)) == 1
        assert results[0] == (state / "link-secret").read_bytes().strip()
        assert sorted(p.name for p in state.iterdir()) == ["link-secret"]


# --- config ---------------------------------------------------------------------------------------------


def test_links_config_defaults() -> None:
    links = NotifyConfig().links
    assert links == Links(base_url=None, ttl=86400.0, secret_env="MW_LINK_SECRET")


def test_links_config_parses() -> None:
    cfg = NotifyConfig.model_validate(
        {"links": {"base_url": "https://gw.example.org/", "ttl": "2h", "secret_env": "GW_LINKS"}}
    )
    assert cfg.links == Links(base_url="https://gw.example.org", ttl=7200.0, secret_env="GW_LINKS")
    assert Links(base_url="http://10.0.0.2:8080/gw//").base_url == "http://10.0.0.2:8080/gw"
    assert Links(base_url="https://[::1]:8443").base_url == "https://[::1]:8443"


@pytest.mark.parametrize(
    "links",
    [
        {"base_url": "gw.example.org"},
        {"base_url": "ftp://gw.example.org"},
        {"base_url": "https://"},
        {"base_url": "https://gw.example.org:port"},
        {"base_url": "https://user:pw@gw.example.org"},
        {"base_url": "https://gw.example.org/?a=1"},
        {"base_url": "https://gw.example.org/#x"},
        {"base_url": "https://gw example.org"},
        {"ttl": 0},
        {"ttl": "-5m"},
        {"secret_env": "1BAD"},
        {"secret_env": "MW-LINK"},
        {"secret_env": ""},
        {"secret": "inline"},
    ],
)
def test_links_config_rejects(links: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        NotifyConfig.model_validate({"links": links})
