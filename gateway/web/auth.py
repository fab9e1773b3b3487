"""Who may change things over HTTP: named bearer tokens from the site file (`http.tokens`).

A request proves itself with `Authorization: Bearer <token>` (the API, the CLI) or the console's cookie
(set by the console's login form, HttpOnly and SameSite=Strict). The presented token is compared with every
configured one in constant time (hmac.compare_digest, all of them, no early exit), so the answer's timing
does not tell how much of a token was right. No header: 401; a token no name has: 403; no tokens configured:
403 saying so. The token itself is never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request
from starlette.responses import Response

from gateway.config.http import ApiToken

COOKIE = "mw_token"
COOKIE_AGE = 30 * 86400  # a duty phone or desk stays logged in for a month, or until "log out"


def login_cookie(resp: Response, token: str, request: Request, name: str = COOKIE) -> None:
    """Keep a login's token in `resp`'s cookie `name`: HttpOnly (no script reads it), SameSite=Strict (no
    other site's form sends it), Secure when the page came over https, for COOKIE_AGE."""
    resp.set_cookie(
        name,
        token,
        max_age=COOKIE_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def logout_cookie(resp: Response, name: str = COOKIE) -> None:
    """Drop the cookie login_cookie set (the same path and attributes, or the browser keeps it)."""
    resp.delete_cookie(name, path="/", httponly=True, samesite="strict")


class Tokens:
    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = [(t.name, t.token.get_secret_value().encode()) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def name_of(self, presented: str) -> str | None:
        """The name of the token presented, or None when no configured token matches."""
        given = presented.encode()
        found: str | None = None
        for name, value in self._tokens:
            if hmac.compare_digest(given, value) and found is None:
                found = name
        return found

    def require(self, request: Request, *, cookie: str = COOKIE, source: str = "http.tokens") -> str:
        """The name of the token a request carries (header first, then the console cookie), or the
        HTTPException (401/403, JSON detail) that refuses it. `cookie` and `source` (what the answers name
        as the tokens' place) are for another server on the same host, e.g. the fleet view: browsers share
        cookies across ports, so it needs a cookie of its own."""
        if not self._tokens:
            raise HTTPException(
                status_code=403, detail="writes over HTTP are off: the site file has no http.tokens"
            )
        header = request.headers.get("authorization")
        presented: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise HTTPException(
                    status_code=401,
                    detail="expected the header 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            presented = value.strip()
        else:
            presented = request.cookies.get(cookie)
        if not presented:
            raise HTTPException(
                status_code=401,
                detail=f"a token is needed: 'Authorization: Bearer <token>' (one of {source})",
                headers={"WWW-Authenticate": "Bearer"},
            )
        name = self.name_of(presented)
        if name is None:
            raise HTTPException(status_code=403, detail=f"this token is not one of {source}")
        return name
