"""Who may command from the fleet view: its named bearer tokens (issue 13, item 2), read once at start.

They come from one of two places, never both (a token left in the environment after its holder was taken
out of the file would still work, unseen):

- the environment, `METERWATCH_FLEET_TOKENS="wang=<token>,li=<token>"` (a name is everything before the
  first `=`, so a token may end in base64's `=`; a token cannot hold a comma: use the file then);
- `--tokens FILE`, one `name: token` a line, blank lines and `#` comments ignored. The file must be
  readable by its owner only (no group or other bits: mode 0600 or 0400), as ssh asks of a private key:
  whoever can read it can act in every name in it.

Each entry is the gateway's own `ApiToken` (gateway/config/http.py: a name of letters, digits, `_`, `.` and
`-`, the name the gateway's timeline records; a token of at least 16 characters), names and tokens unique.
An error says where (the variable's entry number, the file's line) and what is wrong, never the token.
"""

from __future__ import annotations

import stat
from pathlib import Path

from pydantic import ValidationError

from gateway.config.http import ApiToken

ENV = "METERWATCH_FLEET_TOKENS"


class TokenError(ValueError):
    """A token source that cannot be used; the message is safe to print (it holds no token)."""


def parse_env(value: str) -> list[ApiToken]:
    pairs: list[tuple[str, str, str]] = []
    for n, entry in enumerate(value.split(","), 1):
        if not entry.strip():
            continue  # "a=x,b=y," or spaces: nothing meant
        name, sep, token = entry.partition("=")
        if not sep:
            raise TokenError(f"{ENV} entry {n}: expected name=token (entries separated by commas)")
        pairs.append((f"{ENV} entry {n}", name.strip(), token.strip()))
    return _tokens(pairs, ENV)


def read_file(path: Path) -> list[ApiToken]:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise TokenError(f"--tokens {path}: not a regular file")
        if mode & 0o077:
            raise TokenError(
                f"--tokens {path}: mode {stat.S_IMODE(mode):04o} lets others than its owner at it; "
                f"chmod 600 {path}"
            )
        text = path.read_text("utf-8")
    except OSError as exc:
        raise TokenError(f"--tokens {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokenError(f"--tokens {path}: not UTF-8 text") from None
    pairs: list[tuple[str, str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            raise TokenError(f"--tokens {path} line {n}: expected 'name: token'")
        pairs.append((f"--tokens {path} line {n}", name.strip(), token.strip()))
    return _tokens(pairs, f"--tokens {path}")


def _tokens(pairs: list[tuple[str, str, str]], source: str) -> list[ApiToken]:
    tokens: list[ApiToken] = []
    for where, name, token in pairs:
        try:
            tokens.append(ApiToken(name=name, token=token))
        except ValidationError as exc:
            # pydantic's own text would repeat the input, i.e. the token: only the field and the rule
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "entry"
            shown = f" {name[:64]!r}" if field == "name" else ""
            raise TokenError(f"{where}: {field}{shown}: {err['msg']}") from None
    names = [t.name for t in tokens]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TokenError(f"{source}: the name(s) {', '.join(dup)} appear more than once")
    values = [t.token.get_secret_value() for t in tokens]
    if len(set(values)) != len(values):
        raise TokenError(f"{source}: two names have the same token: each name needs its own")
    if not tokens:
        raise TokenError(f"{source}: no token in it")
    return tokens


def load(env_value: str | None, file: Path | None) -> list[ApiToken]:
    """The tokens from the environment's value or the file (at most one of them set), [] when neither."""
    if file is not None and env_value is not None and env_value.strip():
        raise TokenError(f"both {ENV} and --tokens are set: keep one (tokens in two places drift apart)")
    if file is not None:
        return read_file(file)
    if env_value is not None and env_value.strip():
        return parse_env(env_value)
    return []
