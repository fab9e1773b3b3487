"""Resident satisfaction (issue 10, item 5) through the real daemon: a power cut from the simulator is
detected, the residents are told and, once power is back, get the all-clear (apprise json:// to a local
receiver) with a one-tap rating link. The link's page is voted on over plain HTTP as a browser posts its
form: it counts once however often it is used (also when posted at the same instant), an expired, forged,
malformed or foreign link and a bad rating or an overlong comment get clear pages that count nothing, and
the `votes` table keeps nothing personal. The monthly review's reader sees the votes.

Live site (bench/rules_live.py): poll 0.5 s, outage `for` 2 s, `clear_for` 3 s; the residents' delay and
the all-clear's verification 1 s. Every wait is on an event; nothing here is a speed claim.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.config import load_site
from gateway.respond.links import LinkSigner
from gateway.review.data import ReviewReader
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver, receiver, receiver_factory  # noqa: F401
from tests.gateway.web.desk_site import desk_site
from tests.helpers import free_port, wait_until

SECRET = "votes-test-link-secret-0123456789abcdef"  # MW_LINK_SECRET: the test signs links too
AGENT = "VoteTest/9.9 (agent-7731-do-not-keep)"
FORWARDED = "203.0.113.77"
SITE_EXTRA = """
notify:
  hotline: "400-800-1234"
  confirm_delay: {{power_outage: 1s}}
  verify_for: 1s
  links: {{base_url: "http://127.0.0.1:{http_port}"}}
  channels:
    - {{name: residents, url: "{residents}", audiences: [residents], language: zh}}
"""
LINK = re.compile(r"http://127\.0\.0\.1:\d+/r/([A-Za-z0-9_-]+)")


class VoteSite(LiveSite):
    def __init__(self, directory: Path, rx: Receiver) -> None:
        http_port = free_port()
        extra = SITE_EXTRA.format(http_port=http_port, residents=rx.url("json", "/residents"))
        self.directory = directory
        self.site_path = write_live_site(directory, http_port=http_port, extra=extra)
        self.site = load_site(self.site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")

    @property
    def store(self) -> Path:
        return self.directory / "state" / "incidents.sqlite"


@pytest.fixture
def live(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[VoteSite]:
    monkeypatch.setenv("MW_LINK_SECRET", SECRET)
    site = VoteSite(tmp_path, receiver)
    with site:
        yield site


def page(
    live: LiveSite, path: str, form: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, str]:
    """(status, HTML) of a GET, or of a POST of `form` urlencoded as a browser sends it."""
    data = raw if raw is not None else (None if form is None else urllib.parse.urlencode(form).encode())
    req = urllib.request.Request(live.daemon.url + path, data=data, method="GET" if data is None else "POST")
    req.add_header("User-Agent", AGENT)
    req.add_header("X-Forwarded-For", FORWARDED)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, body, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    html = body.decode("utf-8")
    assert ctype.startswith("text/html"), (status, ctype, html[:200])  # a page, never JSON or a trace
    assert "Traceback" not in html and "Internal Server Error" not in html
    return status, html


def votes(live: VoteSite) -> list[tuple[str, int, str, str, float]]:
    db = sqlite3.connect(f"file:{live.store}?mode=ro", uri=True)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'votes'").fetchone() is None:
            return []
        return [
            (str(t), int(i), str(r), str(c), float(a))
            for t, i, r, c, a in db.execute("SELECT token_id, incident_id, rating, comment, at FROM votes")
        ]
    finally:
        db.close()


def power_cut_all_clear(live: VoteSite, rx: Receiver) -> tuple[int, str, str]:
    """Cut and restore B1's power; (incident id, the all-clear's text, its rating token)."""
    live.sim.world.cut_power("B1")

    def outage() -> int | None:
        for inc in live.daemon.api("/api/incidents?state=all")["incidents"]:
            if inc["scope"] == "domain:B1-power":
                return int(inc["id"])
        return None

    incident = wait_until(outage, timeout=60, what="B1's power outage")
    assert incident is not None
    [notice] = rx.wait_for(1, "/residents", timeout=60)
    assert "/r/" not in notice.json()["message"], "only the all-clear asks for a rating"
    live.sim.world.restore_power("B1")
    all_clear = rx.wait_for(2, "/residents", timeout=90)[1].json()
    text = f"{all_clear['title']}\n{all_clear['message']}"
    assert all_clear["title"] == "【恢复供电】B1", text
    links = LINK.findall(text)
    assert len(links) == 1, text
    return incident, text, links[0]


def test_the_all_clear_of_a_real_power_cut_carries_a_rating_link_that_counts_once(
    live: VoteSite,
    receiver: Receiver,  # noqa: F811
) -> None:
    incident, text, token = power_cut_all_clear(live, receiver)
    assert "一键评价" in text
    signer = LinkSigner(SECRET.encode())
    claim = signer.verify(token, "vote")
    assert claim.incident_id == incident and claim.who == "B1"
    assert 6.9 * 86400 < claim.expires_at - time.time() <= 7 * 86400 + 1  # notify.links.vote_ttl: 7 days

    # the page asks; opening it (a chat app's preview, a second look) counts nothing
    for _ in range(2):
        status, html = page(live, f"/r/{token}")
        assert status == 200 and "您对本次停电的处理满意吗？" in html and "B1" in html, html
        for rating, word in (("satisfied", "满意"), ("neutral", "一般"), ("unsatisfied", "不满意")):
            assert f'name="rating" value="{rating}"' in html and f">{word}<" in html
    status, english = page(live, f"/r/{token}?lang=en")
    assert status == 200 and "How satisfied are you with how we handled the power cut?" in english
    assert votes(live) == []

    # the vote counts; the same link again is told so, with the first choice, and counts nothing more
    status, html = page(live, f"/r/{token}", {"rating": "satisfied", "comment": "  修得很快，谢谢！\r\n"})
    assert status == 200 and "感谢您的评价" in html and "满意" in html, html
    [(token_id, voted_incident, rating, comment, at)] = votes(live)
    assert token_id == hashlib.sha256(token.encode()).hexdigest()
    assert (voted_incident, rating, comment) == (incident, "satisfied", "修得很快，谢谢！")
    assert abs(at - time.time()) < 600
    status, html = page(live, f"/r/{token}", {"rating": "unsatisfied", "comment": "changed my mind"})
    assert status == 409 and "已经评价过了" in html and "满意" in html and "不满意" not in html, html
    status, html = page(live, f"/r/{token}?lang=en")
    assert status == 200 and "Already rated" in html and "Satisfied" in html, html
    assert len(votes(live)) == 1 and votes(live)[0][2] == "satisfied"

    # the same link posted many times at once: one counts
    other = signer.make("vote", incident, "residents", 3600)
    ratings = ["neutral", "unsatisfied", "satisfied"] * 3

    def post(rating: str) -> int:
        return page(live, f"/r/{other}", {"rating": rating})[0]

    with ThreadPoolExecutor(len(ratings)) as pool:
        statuses = sorted(pool.map(post, ratings))
    assert statuses == [200] + [409] * (len(ratings) - 1), statuses
    assert len(votes(live)) == 2

    # the monthly review reads them
    record = ReviewReader(live.store).record(incident)
    assert record is not None
    assert sorted(v.incident_id for v in record.votes) == [incident, incident]
    assert "satisfied" in [v.rating for v in record.votes]


def test_bad_links_bad_ratings_and_long_comments_get_clear_pages_and_count_nothing(
    live: VoteSite,
    receiver: Receiver,  # noqa: F811
) -> None:
    incident, _, token = power_cut_all_clear(live, receiver)
    signer = LinkSigner(SECRET.encode())
    past = LinkSigner(SECRET.encode(), clock=lambda: time.time() - 8 * 86400)
    stranger = LinkSigner(b"another-gateway-secret-0123456789abcdef")
    cases = {
        "expired": (past.make("vote", incident, "B1", 86400), 410, "评价链接已过期"),
        "forged": (stranger.make("vote", incident, "B1", 3600), 400, "签名不正确"),
        "altered": (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 400, "链接无效"),
        "malformed": ("not-a-token", 400, "不完整或格式不对"),
        "an ack link": (signer.make("ack", incident, "wang", 3600), 400, "不是评价链接"),
        "unknown incident": (signer.make("vote", 999_999, "B1", 3600), 404, "事件不存在"),
    }
    for what, (bad, status, words) in cases.items():
        for form in (None, {"rating": "satisfied"}):
            got, html = page(live, f"/r/{bad}", form)
            assert got == status and words in html, (what, got, html)
            assert "400-800-1234" in html, "the page gives the hotline"
    got, html = page(live, f"/r/{cases['expired'][0]}?lang=en")
    assert got == 410 and "Rating link expired" in html and "expired at" in html, html

    # a rating that is none of the three, a comment past 500 characters: the form again, with what was typed
    for form in ({"rating": "great"}, {"comment": "no rating"}):
        got, html = page(live, f"/r/{token}", form)
        assert got == 400 and "请选择“满意”“一般”或“不满意”之一" in html and 'id="vote"' in html, html
    long = "好" * 501
    got, html = page(live, f"/r/{token}", {"rating": "neutral", "comment": long})
    assert got == 400 and "留言有501字，最多500字" in html and f">{long}</textarea>" in html, html
    got, html = page(live, f"/r/{token}", raw=b"rating=neutral&comment=" + b"x" * (70 * 1024))
    assert got == 413 and 'id="vote"' in html
    assert votes(live) == []

    # exactly 500 characters fit; line breaks count once
    fits = "好" * 498 + "\r\n" + "好"
    got, html = page(live, f"/r/{token}", {"rating": "neutral", "comment": fits})
    assert got == 200, html
    [(_, _, rating, comment, _)] = votes(live)
    assert rating == "neutral" and comment == "好" * 498 + "\n" + "好" and len(comment) == 500


def test_nothing_personal_is_stored(live: VoteSite, receiver: Receiver) -> None:  # noqa: F811
    _, _, token = power_cut_all_clear(live, receiver)
    assert page(live, f"/r/{token}", {"rating": "unsatisfied", "comment": "水压还是低"})[0] == 200
    db = sqlite3.connect(f"file:{live.store}?mode=ro", uri=True)
    try:
        columns = [
            (name, kind, notnull, pk)
            for _, name, kind, notnull, _, pk in db.execute("PRAGMA table_info(votes)")
        ]
    finally:
        db.close()
    assert columns == [
        ("token_id", "TEXT", 0, 1),
        ("incident_id", "INTEGER", 1, 0),
        ("rating", "TEXT", 1, 0),
        ("comment", "TEXT", 1, 0),
        ("at", "REAL", 1, 0),
    ]
    [row] = votes(live)
    assert token not in repr(row), "the token itself (which would let a reader vote) is not kept"
    # neither the browser nor the address it came from is anywhere in the store (nor its log)
    files = [p for p in live.store.parent.iterdir() if p.name.startswith("incidents.sqlite")]
    assert files
    for f in files:
        data = f.read_bytes()
        assert AGENT.encode() not in data and FORWARDED.encode() not in data, f


def test_without_links_configured_the_rating_page_says_so(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    with desk_site(tmp_path, receiver) as site:
        req = urllib.request.Request(site.url + "/r/anything")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        html = caught.value.read().decode("utf-8")
        assert caught.value.code == 404 and "未启用评价" in html and "notify.links.base_url" in html, html
