"""The pages in Debian's headless Chromium against the real daemon: a power cut from the simulator is
dispatched with signed links (apprise json:// to a local receiver), the ack link opened in Chromium
acknowledges and the escalation stops; the console logs in with its form and acts; the building page tells
residents what is going on without a name or a phone number. Bad links, an unknown building and a missing
token are clear pages that change nothing.

Chromium runs as `chromium --headless --dump-dom/--screenshot` for what a person opens once, and over
`--remote-debugging-pipe` (a few lines of the DevTools protocol, no library) where a form must be filled.
Nothing downloads a browser: without Debian's chromium (scripts/bootstrap installs it) the tests fail.
The screenshots land in the test's tmp folder; MW_UPDATE_SCREENSHOTS=1 also copies them to
docs/screenshots/ (that is how the committed ones were made).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench.rules_live import DaemonThread, LiveSite, write_live_site
from gateway.config import load_site
from gateway.respond.desk import DaemonDesk
from gateway.respond.desk_api import ResponseView
from gateway.respond.links import LinkSigner
from simulators.runner import SimulatorThread
from tests.fixtures.receiver import Receiver, receiver, receiver_factory  # noqa: F401
from tests.helpers import REPO, free_port, wait_until

CHROMIUM = shutil.which("chromium")
SHOTS = REPO / "docs" / "screenshots"
TZ = ZoneInfo("Asia/Shanghai")

if CHROMIUM is None:  # a missing service fails the tests, it never skips them
    pytest.fail(
        "Debian's chromium is not installed: `make test` installs it (scripts/bootstrap: apt-get install "
        "chromium)",
        pytrace=False,
    )

TOKEN_ENV = "MW_PAGES_TEST_TOKEN"
TOKEN = "pages-desk-token-3f9a27c1"
SECRET = "pages-test-link-secret-0123456789abcdef"  # MW_LINK_SECRET: the test can sign links too

# The dispatch goes to the on-call's channel at once, the backup's 3 s later, the supervisor's 20 s later
# (time enough for chromium to open the ack link in between, on a busy machine too).
ROSTER = """
oncall:
  people:
    - {id: wang, name: 王伟, phone: "13800000001"}
    - {id: li, name: 李娜, phone: "13800000002"}
    - {id: zhao, name: 赵磊, phone: "13800000003"}
  shifts: [{oncall: wang, backup: li}]
  supervisor: zhao
  escalation:
    - {after: 0s, notify: [oncall]}
    - {after: 3s, notify: [backup]}
    - {after: 20s, notify: [supervisor]}
  repeat_every: 0s
notify:
  hotline: "400-800-1234"
  LINKS
  channels:
    - {name: oncall, url: "RECEIVER/oncall", audiences: [oncall]}
    - {name: backup, url: "RECEIVER/backup", audiences: [backup]}
    - {name: supervisor, url: "RECEIVER/supervisor", audiences: [supervisor]}
"""
SUPERVISOR_STEP = 20.0

# Chromium's own background connections are refused by a closed network: never start them.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)
PHONE = (390, 844)


# ---------------------------------------------------------------------------------------------- chromium


def chromium(url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 5000) -> str:
    """The DOM after `url` loaded and its scripts ran for `budget_ms` of virtual time (the ack page's
    form submits itself meanwhile); with `screenshot`, also a phone-sized PNG of that moment."""
    assert CHROMIUM is not None
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        args += [f"--screenshot={screenshot}", f"--window-size={PHONE[0]},{PHONE[1]}"]
    r = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class Browser:
    """One headless Chromium tab driven over --remote-debugging-pipe: fds 3 and 4 of the child carry
    NUL-terminated JSON messages of the DevTools protocol."""

    def __init__(self, profile: Path, width: int = PHONE[0], height: int = PHONE[1]) -> None:
        assert CHROMIUM is not None
        to_child_r, self._out = os.pipe()
        self._in, from_child_w = os.pipe()

        def pipes_as_3_and_4() -> None:  # in the child, before exec
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes_as_3_and_4,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=True,
            )
        except BaseException:
            self.close()
            raise

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer")
            if select.select([self._in], [], [], left)[0]:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its pipe")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        parsed: dict[str, Any] = json.loads(msg)
        return parsed

    def call(self, method: str, session: bool = False, timeout: float = 30.0, **params: Any) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            got = self._read(deadline)
            if got.get("id") == self._id:  # events in between are not needed
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def _settle(self, action: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # the old document carries a mark: a page without it, fully loaded, is the new one
        while not self.js("!window.__mwOld && document.readyState === 'complete'"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new page after {action}")
            time.sleep(0.05)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        self.js("window.__mwOld = true")
        self.call("Page.navigate", session=True, url=url)
        self._settle(url, timeout)

    def submit(self, expression: str, timeout: float = 30.0) -> None:
        """Run `expression` (a click or form.submit()) and wait for the page it leads to (redirects
        followed)."""
        self.js("window.__mwOld = true")
        self.js(expression)
        self._settle(expression, timeout)

    def text(self) -> str:
        return str(self.js("document.body.innerText"))

    def html(self) -> str:
        return str(self.js("document.documentElement.outerHTML"))

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.call("Network.getCookies", session=True)["cookies"])

    def screenshot(self, path: Path) -> None:
        """The whole page, phone-wide."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        r = self.call(
            "Page.captureScreenshot", session=True, format="png", clip=clip, captureBeyondViewport=True
        )
        path.write_bytes(base64.b64decode(r["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def browser(tmp: Path) -> Iterator[Browser]:
    b = Browser(Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp)))
    try:
        yield b
    finally:
        b.close()


def keep(shot: Path, name: str) -> None:
    """A PNG made by the test, copied to docs/screenshots/ when asked (MW_UPDATE_SCREENSHOTS=1)."""
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    if os.environ.get("MW_UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SHOTS / name)


# ---------------------------------------------------------------------------------------------- the site


class PagesSite(LiveSite):
    """The live site of bench/rules_live.py with a console token, signed links and an on-call roster whose
    channels are paths of a local receiver."""

    def __init__(self, directory: Path, rx: Receiver, links: bool = True) -> None:
        port = free_port()
        links_line = f'links: {{base_url: "http://127.0.0.1:{port}"}}' if links else ""
        extra = ROSTER.replace("RECEIVER", rx.url("json", "")).replace("LINKS", links_line)
        path = write_live_site(directory, http_port=port, extra=extra)
        text, n = re.subn(
            r"^http: \{(.*)\}$",
            rf"http: {{\1, tokens: [{{name: desk, token: '${{{TOKEN_ENV}}}'}}]}}",
            path.read_text(encoding="utf-8"),
            flags=re.M,
        )
        assert n == 1, "bench/rules_live.py's http line changed"
        path.write_text(text, encoding="utf-8")
        self.directory = directory
        self.site_path = path
        self.site = load_site(path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")

    def __enter__(self) -> PagesSite:
        super().__enter__()
        return self

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def desk(self) -> DaemonDesk:
        desk = self.daemon.services.desk
        assert desk is not None
        return desk

    def response(self, incident_id: int) -> ResponseView:
        rv = self.desk.response(incident_id)
        assert rv is not None
        return rv

    def events(self, incident_id: int) -> list[str]:
        return [e["event"] for e in self.daemon.api(f"/api/incidents/{incident_id}")["timeline"]]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("MW_LINK_SECRET", SECRET)


def get(url: str, data: bytes | None = None) -> tuple[int, str]:
    """Status and body of a plain request (no cookie, no redirects followed past the first answer)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def message_text(request: Any) -> str:
    body = request.json()
    return f"{body['title']}\n{body['message']}"


def local_minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, TZ).strftime("%Y-%m-%dT%H:%M")


# ---------------------------------------------------------------------------------------------- tests


def test_power_cut_ack_link_console_and_building_page_in_chromium(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    env: None,
) -> None:
    with PagesSite(tmp_path, receiver) as live:
        live.sim.world.cut_power("B1")

        # the dispatch reaches the on-call's channel with the signed links
        [dispatch] = receiver.wait_for(1, "/oncall", timeout=60)
        text = message_text(dispatch)
        found = re.search(r"http://127\.0\.0\.1:\d+/ack/[A-Za-z0-9_-]+", text)
        assert found, text
        ack_url = found.group(0)
        assert re.search(r"/on-site/[A-Za-z0-9_-]+", text), text
        [inc] = [i for i in live.daemon.api("/api/incidents?state=open")["incidents"] if "B1" in i["scope"]]
        inc_id = inc["id"]

        # nobody acknowledges: the backup is called
        receiver.wait_for(1, "/backup", timeout=30)
        before = live.response(inc_id)
        assert before.acked_at is None and before.step == 1
        assert before.dispatched_at is not None

        # the on-call opens the ack link: the page acknowledges by itself and says so, with the time
        shot = tmp_path / "ack.png"
        dom = chromium(ack_url, tmp_path / "profile-ack", screenshot=shot)
        assert 'id="done"' in dom and "已确认" in dom, dom
        acked = live.response(inc_id)
        assert acked.acked_by == "wang" and acked.acked_at is not None
        assert datetime.fromtimestamp(acked.acked_at, TZ).strftime("%H:%M") in dom
        assert "王伟" in dom  # the person the link was made for, by name
        assert "acknowledged" in live.events(inc_id)
        keep(shot, "ack.png")

        # opened again: it says who acknowledged when, and acknowledges nothing twice
        dom = chromium(ack_url, tmp_path / "profile-ack2")
        assert "已确认" in dom and 'id="done"' not in dom and 'id="act"' not in dom
        assert live.response(inc_id).acked_at == acked.acked_at
        assert live.events(inc_id).count("acknowledged") == 1

        # the console: the login form only, until the token is given
        with browser(tmp_path) as b:
            b.goto(live.url + "/")
            assert b.js("document.querySelectorAll('input[name=token]').length") == 1
            page = b.html()
            assert f'id="inc-{inc_id}"' not in page and "B1-power" not in page and "王伟" not in page

            b.js(f"document.querySelector('input[name=token]').value = '{TOKEN}'")
            b.submit("document.querySelector('form').submit()")
            [cookie] = [c for c in b.cookies() if c["name"] == "mw_token"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            card = f"#inc-{inc_id}"
            assert b.js(f"!!document.querySelector('{card}')")
            text = b.text()
            assert "已确认：王伟" in text, text
            assert "B1-main" in text and "设备状态" in text  # device health
            assert "当前值班" in text and "王伟" in text and "13800000001" in text  # on call now
            assert "确认用时" in text and "目标 30分钟" in text  # the 30-minute clock, stopped by the ack

            # on site, a note and the expected restoration, through the console's forms
            b.submit(f"document.querySelector('{card} form[action$=\"/on-site\"] button').click()")
            assert "已记录到场" in b.text()
            assert live.response(inc_id).on_site_by == "desk"
            b.js(f"document.querySelector('{card} textarea[name=text]').value = '主开关跳闸，正在检修'")
            b.submit(f"document.querySelector('{card} textarea[name=text]').form.submit()")
            assert [n.text for n in live.response(inc_id).notes] == ["主开关跳闸，正在检修"]
            eta = (int(time.time() // 60) + 120) * 60.0
            b.js(f"document.querySelector('#eta-{inc_id}').value = '{local_minute(eta)}'")
            b.submit(f"document.querySelector('#eta-{inc_id}').form.submit()")
            assert live.response(inc_id).eta == eta
            assert "预计恢复时间已更新" in b.text()

            b.goto(live.url + "/")  # without the #inc anchor: the screenshot starts at the top
            text = b.text()
            assert "主开关跳闸，正在检修" in text and "已到场：desk" in text
            shot = tmp_path / "console.png"
            b.screenshot(shot)
            keep(shot, "console.png")

            b.submit("document.querySelector('form.logout button').click()")
            assert b.js("document.querySelectorAll('input[name=token]').length") == 1
            assert not [c for c in b.cookies() if c["name"] == "mw_token"]

        # the public building page during the outage: what residents need, and nobody's name or phone
        shot = tmp_path / "building.png"
        dom = chromium(live.url + "/b/B1", tmp_path / "profile-b1", screenshot=shot)
        assert "停电中" in dom and "400-800-1234" in dom
        assert '<meta http-equiv="refresh" content="30">' in dom  # it refreshes itself
        assert "抢修人员已到场" in dom
        # two hours on: the page adds the date when that is tomorrow (a run between 22:00 and 24:00 there)
        due = datetime.fromtimestamp(eta, TZ)
        day = "" if due.date() == datetime.now(TZ).date() else f"{due.month}月{due.day}日 "
        assert f"预计 {day}{due:%H:%M} 前恢复" in dom
        for private in ("王伟", "wang", "13800000001", "desk", "主开关跳闸"):
            assert private not in dom, private
        keep(shot, "building.png")
        dom = chromium(live.url + "/b/B2?lang=en", tmp_path / "profile-b2")
        assert "Power on" in dom and "Power cut" not in dom

        # the escalation stopped at the ack: the supervisor's step never comes
        due = before.dispatched_at + SUPERVISOR_STEP + 4.0
        time.sleep(max(0.0, due - time.time()))
        assert receiver.count("/supervisor") == 0
        assert live.response(inc_id).step == 1
        assert live.events(inc_id).count("escalated") == 1
        assert receiver.count("/oncall") == 1 and receiver.count("/backup") == 1


def test_bad_links_unknown_building_and_no_token_are_clear_pages_that_change_nothing(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    env: None,
) -> None:
    with PagesSite(tmp_path, receiver) as live:
        live.sim.world.cut_power("B1")
        receiver.wait_for(1, "/oncall", timeout=60)
        [inc] = [i for i in live.daemon.api("/api/incidents?state=open")["incidents"] if "B1" in i["scope"]]
        inc_id = inc["id"]
        ours = LinkSigner(SECRET.encode())
        theirs = LinkSigner(b"another gateway's secret, 32+ bytes long")
        past = LinkSigner(SECRET.encode(), clock=lambda: time.time() - 7 * 86400)
        cases = {
            "forged": (f"/ack/{theirs.make('ack', inc_id, 'wang', 3600)}", 400, "签名不正确"),
            "expired": (f"/ack/{past.make('ack', inc_id, 'wang', 3600)}", 410, "已过期"),
            "malformed": ("/ack/not-a-token", 400, "格式不对"),
            "wrong action": (f"/ack/{ours.make('on_site', inc_id, 'wang', 3600)}", 400, "用途不符"),
            "no incident": (f"/on-site/{ours.make('on_site', 999, 'wang', 3600)}", 404, "事件 #999 不存在"),
        }
        for name, (path, status, words) in cases.items():
            for data in (None, b""):  # GET shows the page; POST acts only on a good link
                got, body = get(live.url + path, data)
                assert (got, name) == (status, name) and words in body, body
        # in Chromium the expired link is a page that says so; it has no form, so nothing submits itself
        dom = chromium(live.url + cases["expired"][0], tmp_path / "profile-expired")
        assert "链接已过期" in dom and "没有做任何更改" in dom
        rv = live.response(inc_id)
        assert rv.acked_at is None and rv.on_site_at is None
        assert "acknowledged" not in live.events(inc_id)

        # no such building
        got, body = get(live.url + "/b/B9")
        assert got == 404 and "没有编号为 B9 的楼栋" in body
        got, body = get(live.url + "/b/B9?lang=en")
        assert got == 404 and "There is no building B9" in body

        # no token: the console is its login form; a wrong token is refused; a form without the cookie
        # acts on nothing
        got, body = get(live.url + "/")
        assert got == 200 and 'name="token"' in body and f"inc-{inc_id}" not in body
        got, body = get(live.url + "/console/login", b"token=wrong-token-0000000000")
        assert got == 403 and "令牌不正确" in body
        got, body = get(live.url + f"/console/incidents/{inc_id}/ack", b"")
        assert got == 401 and 'name="token"' in body
        assert live.response(inc_id).acked_at is None

        # a good link still works after all that
        got, body = get(live.url + f"/ack/{ours.make('ack', inc_id, 'li', 3600)}", b"")
        assert got == 200 and "已确认" in body
        assert live.response(inc_id).acked_by == "li"


def test_without_links_configured_the_link_pages_say_so(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    env: None,
) -> None:
    site = PagesSite(tmp_path, receiver, links=False)
    # no meters needed to answer a link: the daemon alone, its pollers finding nobody
    site.daemon.start()
    try:
        token = LinkSigner(SECRET.encode()).make("ack", 1, "wang", 3600)
        for path in (f"/ack/{token}", f"/on-site/{token}"):
            got, body = get(site.url + path)
            assert got == 404 and "notify.links.base_url" in body
        dom = chromium(site.url + f"/ack/{token}?lang=en", tmp_path / "profile")
        assert "Links are not configured" in dom
        wait_until(lambda: get(site.url + "/b/B1")[0] == 200, timeout=10, what="the building page")
    finally:
        site.daemon.stop()
