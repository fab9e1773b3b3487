"""Who may command from the fleet view: its named tokens from METERWATCH_FLEET_TOKENS or --tokens FILE
(gateway/fleetview/tokens.py), and `meterwatch fleet --command-key` refusing to start without any (exit 2,
one line, never a token). The view's HTTP side is tests/gateway/fleetview/test_commands.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway.cli.main import app
from gateway.config.http import ApiToken
from gateway.fleet.command_format import keygen
from gateway.fleetview.tokens import ENV, TokenError, load, parse_env, read_file

WANG, LI = "wang-token-0123456789", "li-token-abcdefghij=="  # base64 padding: a token may end in '='


def names(tokens: list[ApiToken]) -> dict[str, str]:
    return {t.name: t.token.get_secret_value() for t in tokens}


def token_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_tokens_from_the_environment() -> None:
    assert names(parse_env(f"wang={WANG}, li={LI},")) == {"wang": WANG, "li": LI}
    assert load(f"wang={WANG}", None)[0].name == "wang"
    assert load(None, None) == [] and load("  ", None) == []


def test_tokens_from_a_file_readable_by_its_owner_only(tmp_path: Path) -> None:
    f = token_file(tmp_path / "tokens", f"# who may command\nwang: {WANG}\n\n  li : {LI}\n")
    assert names(read_file(f)) == {"wang": WANG, "li": LI}
    f.chmod(0o400)
    assert len(load(None, f)) == 2
    for mode in (0o644, 0o640, 0o604, 0o620):
        f.chmod(mode)
        with pytest.raises(TokenError, match=rf"mode 0{mode:o} lets others than its owner at it; chmod 600"):
            read_file(f)
    with pytest.raises(TokenError, match="No such file"):
        read_file(tmp_path / "missing")
    with pytest.raises(TokenError, match="not a regular file"):
        read_file(tmp_path)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (f"wang {WANG}", f"{ENV} entry 1: expected name=token"),
        (f"wang={WANG},li=short-li", f"{ENV} entry 2: token: Value error, a token needs at least 16"),
        (f"王工={WANG}", f"{ENV} entry 1: name '王工': String should match pattern"),
        (f"=${WANG}", f"{ENV} entry 1: name '': String should"),
        (f"wang={WANG},wang={LI}", "the name(s) wang appear more than once"),
        (f"wang={WANG},li={WANG}", "two names have the same token"),
    ],
)
def test_a_bad_entry_is_named_and_its_token_never_shown(value: str, words: str) -> None:
    with pytest.raises(TokenError) as exc:
        parse_env(value)
    assert words in str(exc.value)
    for secret in (WANG, LI, "short-li"):
        assert secret not in str(exc.value)


def test_a_bad_file_line_is_named(tmp_path: Path) -> None:
    f = token_file(tmp_path / "tokens", f"wang: {WANG}\nli {LI}\n")
    with pytest.raises(TokenError, match=rf"--tokens {f} line 2: expected 'name: token'"):
        read_file(f)
    token_file(f, "# nobody yet\n")
    with pytest.raises(TokenError, match="no token in it"):
        read_file(f)
    with pytest.raises(TokenError, match=r"both .* and --tokens are set: keep one"):
        load(f"wang={WANG}", f)


def fleet(env: dict[str, str | None], *args: str) -> Result:
    # mqtt://127.0.0.1:1: the usage errors come before anything connects
    return CliRunner().invoke(app, ["fleet", "--broker", "mqtt://127.0.0.1:1", *args], env=env)


def test_command_key_without_tokens_is_a_usage_error(tmp_path: Path) -> None:
    private, _ = keygen(tmp_path / "keys")
    r = fleet({ENV: None}, "--command-key", str(private))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--command-key needs named tokens" in lines[0] and ENV in lines[0]
    assert "--tokens FILE" in lines[0]

    r = fleet({ENV: f"wang={WANG},li=tiny-li"}, "--command-key", str(private))
    assert r.exit_code == 2 and f"{ENV} entry 2: token" in r.output, r.output
    assert WANG not in r.output and "tiny-li" not in r.output and "Traceback" not in r.output

    loose = token_file(tmp_path / "tokens", f"wang: {WANG}\n", 0o644)
    r = fleet({ENV: None}, "--command-key", str(private), "--tokens", str(loose))
    assert r.exit_code == 2 and "chmod 600" in r.output and WANG not in r.output

    loose.chmod(0o600)
    r = fleet({ENV: f"li={LI}"}, "--command-key", str(private), "--tokens", str(loose))
    assert r.exit_code == 2 and "keep one" in r.output and LI not in r.output

    r = fleet({ENV: None}, "--tokens", str(loose))  # tokens without the key: a mistake, not read-only
    assert r.exit_code == 2 and "give --command-key too" in r.output
