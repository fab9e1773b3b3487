"""The residents' rating page: the one-tap link of the all-clear (`links.vote`, gateway/respond/responder.py).

    GET  /r/{token}    the question (satisfied / neutral / unsatisfied, an optional comment); a link that
                       has voted shows the vote that counted. A GET never votes: a chat app's link
                       preview fetches the page too.
    POST /r/{token}    verify the link again and count the vote, once per link (gateway/web/vote_store.py):
                       the thank-you page (200), or (409) the page saying it was counted already, with the
                       first choice

Public, without a token or cookie: the signed link is the permission. A link that does not stand gets a
page saying so, never a stack trace: forged or malformed 400, made for another page 400, expired 410, its
incident unknown 404, links not configured 404. A rating that is none of the three or a comment longer
than 500 characters is a 400 showing the form again with what was typed (a body past 64 KiB: 413);
nothing is counted then.

Nothing personal is kept or shown: no address, no name, no browser; the page names the building and the
outage, as the public building page does. Chinese by default, English with `?lang=en`, in the look of the
other pages (gateway/web/pages.py): the same templates folder, style sheet and security headers.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from gateway.config import Site
from gateway.incidents.store import StoreReader
from gateway.respond.context import buildings_of
from gateway.respond.links import LinkClaim, LinkError, LinkSigner
from gateway.respond.messages import format_time, what_happened
from gateway.web.pages import FORM_MAX, HERE, LINK_STATUS, Lang, form_fields, pick_lang, relative_root
from gateway.web.vote_store import COMMENT_MAX, RATINGS, Vote, VoteStore
from rules.model import Incident

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "vote_title": "服务评价",
        "question": "您对本次{what}的处理满意吗？",
        "about": "{where} · {start} 至 {end}",
        "about_open": "{where} · 开始于 {start}",
        "satisfied": "满意",
        "neutral": "一般",
        "unsatisfied": "不满意",
        "comment_label": "留言（可选，最多{n}字），然后点选下面的评价：",
        "comment_placeholder": "有什么想告诉物业的？",
        "anonymous": "评价是匿名的：不记录您的姓名、电话或网络地址。每个链接只计一次。",
        "thanks_title": "感谢您的评价",
        "thanks": "已记录您的评价：{rating}。",
        "already_title": "已经评价过了",
        "already": "此链接的评价已于 {t} 记录：{rating}。每个链接只计一次。",
        "bad_rating": "请选择“满意”“一般”或“不满意”之一；未记录任何评价。",
        "long_comment": "留言有{got}字，最多{n}字。请缩短后再点选评价；未记录任何评价。",
        "link_expired_title": "评价链接已过期",
        "link_expired": "此评价链接已于 {t} 过期，不能再评价。感谢您的关注！",
        "link_forged_title": "链接无效",
        "link_forged": "此链接的签名不正确：可能被改动过，或不是本物业网关生成的。",
        "link_malformed_title": "链接无效",
        "link_malformed": "此链接不完整或格式不对，请从恢复通知中完整打开。",
        "link_wrong_action_title": "链接用途不符",
        "link_wrong_action": "此链接不是评价链接。",
        "links_off_title": "未启用评价",
        "links_off": "本网关未配置链接地址（notify.links.base_url），无法评价。",
        "no_incident_title": "找不到事件",
        "no_incident": "此评价链接对应的事件不存在。",
        "nothing_counted": "没有记录任何评价。",
        "hotline": "如有问题，请拨打服务热线：{hotline}",
        "back": "返回",
        "other_lang": "English",
    },
    "en": {
        "vote_title": "How did we do?",
        "question": "How satisfied are you with how we handled {what}?",
        "about": "{where} · {start} to {end}",
        "about_open": "{where} · since {start}",
        "satisfied": "Satisfied",
        "neutral": "Neutral",
        "unsatisfied": "Unsatisfied",
        "comment_label": "A comment (optional, at most {n} characters), then tap your rating below:",
        "comment_placeholder": "Anything you want the property management to know?",
        "anonymous": "Your rating is anonymous: no name, phone number or network address is kept. Each "
        "link counts once.",
        "thanks_title": "Thank you for your rating",
        "thanks": "Your rating was counted: {rating}.",
        "already_title": "Already rated",
        "already": "This link's rating was counted at {t}: {rating}. Each link counts once.",
        "bad_rating": "Please choose Satisfied, Neutral or Unsatisfied; nothing was counted.",
        "long_comment": "Your comment has {got} characters; at most {n} fit. Please shorten it, then tap "
        "your rating; nothing was counted.",
        "link_expired_title": "Rating link expired",
        "link_expired": "This rating link expired at {t}; it can no longer be used. Thank you all the same!",
        "link_forged_title": "Invalid link",
        "link_forged": "This link's signature does not match: it was altered or not made by this gateway.",
        "link_malformed_title": "Invalid link",
        "link_malformed": "This link is incomplete or garbled; open it whole from the all-clear message.",
        "link_wrong_action_title": "Not a rating link",
        "link_wrong_action": "This link is not a rating link.",
        "links_off_title": "Ratings are not configured",
        "links_off": "This gateway has no link address (notify.links.base_url): nothing can be rated.",
        "no_incident_title": "No such incident",
        "no_incident": "The incident this rating link is for does not exist.",
        "nothing_counted": "Nothing was counted.",
        "hotline": "Questions? Call our hotline: {hotline}",
        "back": "Back",
        "other_lang": "中文",
    },
}

# control characters a comment keeps: line breaks and tabs; the others are noise from a paste
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_comment(text: str) -> str:
    """A posted comment as it is counted: the browser's CRLF as LF, other control characters dropped,
    outer blanks stripped. Its length is then checked against COMMENT_MAX."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


class VotePages:
    """What the handlers share: the site, the signer, the readers and one Jinja2 environment."""

    def __init__(
        self,
        site: Site,
        reader: StoreReader,
        store: VoteStore,
        signer: LinkSigner | None,
        clock: Callable[[], float],
    ) -> None:
        self.site = site
        self.reader = reader
        self.store = store
        self.signer = signer
        self.clock = clock
        self.tz = site.config.site.timezone
        self.names = {b.id: (b.name or b.id) for b in site.config.buildings}
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def t(self, lang: Lang, key: str, **kw: Any) -> str:
        text = WORDS[lang][key]
        return text.format(**kw) if kw else text

    def when(self, lang: Lang, ts: float | None) -> str:
        return format_time(ts, lang, self.tz) if ts is not None else ""

    def render(self, request: Request, template: str, status: int, **context: Any) -> HTMLResponse:
        lang = pick_lang(request)
        path = request.url.path
        html = self.env.get_template(template).render(
            lang=lang,
            t=lambda key, **kw: self.t(lang, key, **kw),
            root=relative_root(path),
            lang_switch=path.rsplit("/", 1)[-1] + ("" if lang == "en" else "?lang=en"),
            site_name=self.site.config.site.name or self.site.config.site.id,
            nonce=secrets.token_urlsafe(16),
            **context,
        )
        headers = {
            # as the other pages (gateway/web/pages.py); these need no script at all
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'none'; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "Referrer-Policy": "no-referrer",  # the address holds the token
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(html, status_code=status, headers=headers)

    def message(self, request: Request, status: int, key: str, **kw: Any) -> HTMLResponse:
        lang = pick_lang(request)
        hotline = self.site.config.notify.hotline
        return self.render(
            request,
            "message.html",
            status,
            title=self.t(lang, f"{key}_title"),
            text=self.t(lang, key, **kw),
            detail=self.t(lang, "hotline", hotline=hotline) if hotline else "",
        )

    def where(self, claim: LinkClaim, inc: Incident, lang: Lang) -> str:
        """The building the link was sent to, else the incident's buildings, else the site."""
        if claim.who in self.names:
            return self.names[claim.who]
        names = [self.names.get(b, b) for b in buildings_of(inc, self.site)]
        joined = ("、" if lang == "zh" else ", ").join(names)
        return joined or (self.site.config.site.name or self.site.config.site.id)

    def about(self, claim: LinkClaim, inc: Incident, lang: Lang) -> dict[str, str]:
        where = self.where(claim, inc, lang)
        start = self.when(lang, inc.opened_at)
        if inc.resolved_at is None:
            about = self.t(lang, "about_open", where=where, start=start)
        else:
            about = self.t(lang, "about", where=where, start=start, end=self.when(lang, inc.resolved_at))
        what = what_happened(inc.category, lang, "" if lang == "zh" else "the")
        return {"question": self.t(lang, "question", what=what), "about": about}

    def form(
        self, request: Request, claim: LinkClaim, inc: Incident, status: int, error: str, comment: str
    ) -> HTMLResponse:
        lang = pick_lang(request)
        return self.render(
            request,
            "vote.html",
            status,
            **self.about(claim, inc, lang),
            ratings=RATINGS,
            comment=comment,
            comment_max=COMMENT_MAX,
            error=error,
            form_action=request.url.path + ("?lang=en" if lang == "en" else ""),
        )

    def counted(self, request: Request, vote: Vote, first_time: bool) -> HTMLResponse:
        lang = pick_lang(request)
        rating = self.t(lang, vote.rating) if vote.rating in RATINGS else vote.rating
        if first_time:
            title, text, status = self.t(lang, "thanks_title"), self.t(lang, "thanks", rating=rating), 200
        else:
            text = self.t(lang, "already", t=self.when(lang, vote.at), rating=rating)
            title, status = self.t(lang, "already_title"), 200 if request.method == "GET" else 409
        return self.render(
            request, "vote_done.html", status, title=title, text=text, rating=vote.rating, first=first_time
        )

    async def claim(self, request: Request, token: str) -> tuple[LinkClaim, Incident] | HTMLResponse:
        """The verified link and its incident, or the page saying why the link does not stand."""
        lang = pick_lang(request)
        if self.signer is None:
            return self.message(request, 404, "links_off")
        try:
            claim = self.signer.verify(token, "vote")
        except LinkError as exc:
            kw = {"t": self.when(lang, exc.expires_at)} if exc.reason == "expired" else {}
            return self.message(request, LINK_STATUS[exc.reason], f"link_{exc.reason}", **kw)
        inc = await asyncio.to_thread(self.reader.incident, claim.incident_id)
        if inc is None:
            return self.message(request, 404, "no_incident")
        return claim, inc


def make_router(
    site: Site,
    reader: StoreReader,
    signer: LinkSigner | None,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """The rating page's routes; votes go to the incident store file `reader` reads."""
    pages = VotePages(site, reader, VoteStore(reader.path), signer, clock)
    router = APIRouter(include_in_schema=False)

    @router.get("/r/{token}", response_class=HTMLResponse)
    async def vote_page(request: Request, token: str) -> HTMLResponse:
        found = await pages.claim(request, token)
        if isinstance(found, HTMLResponse):
            return found
        claim, inc = found
        vote = await asyncio.to_thread(pages.store.find, token)
        if vote is not None:
            return pages.counted(request, vote, first_time=False)
        return pages.form(request, claim, inc, 200, "", "")

    @router.post("/r/{token}", response_class=HTMLResponse)
    async def vote_post(request: Request, token: str) -> HTMLResponse:
        found = await pages.claim(request, token)
        if isinstance(found, HTMLResponse):
            return found
        claim, inc = found
        lang = pick_lang(request)
        first = await asyncio.to_thread(pages.store.find, token)
        if first is not None:  # whatever this one says: the link has had its vote
            return pages.counted(request, first, first_time=False)
        try:
            fields = await form_fields(request)
        except HTTPException:  # larger than any form of this page: said like a long comment
            error = pages.t(lang, "long_comment", got=f"{FORM_MAX}+", n=COMMENT_MAX)
            return pages.form(request, claim, inc, 413, error, "")
        rating = fields.get("rating", "")
        comment = clean_comment(fields.get("comment", ""))
        if rating not in RATINGS:
            return pages.form(request, claim, inc, 400, pages.t(lang, "bad_rating"), comment)
        if len(comment) > COMMENT_MAX:
            error = pages.t(lang, "long_comment", got=len(comment), n=COMMENT_MAX)
            return pages.form(request, claim, inc, 400, error, comment)
        cast = await asyncio.to_thread(pages.store.cast, token, claim.incident_id, rating, comment, clock())
        return pages.counted(request, cast.vote, first_time=cast.counted)

    return router
