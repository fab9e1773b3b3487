"""SMS through an in-house HTTP SMS gateway: a small custom apprise plugin (an example to adapt).

apprise has no plugin for the Chinese cloud SMS services; most sites put a small HTTP gateway in front of
theirs (or of a GSM modem). This plugin POSTs one JSON request per message to such a gateway:

    POST http://HOST:PORT/PATH
    Content-Type: application/json
    {"to": ["13800000000", "13900000000"], "text": "<title>\\n<body>"}

and takes any 2xx answer as delivered (True), anything else, or no answer, as failed (False).

URL (the channel's url in the site file; secrets as ${ENV}):

    smsgw://HOST[:PORT]/PATH?to=13800000000,13900000000       HTTP
    smsgws://HOST[:PORT]/PATH?to=13800000000,13900000000      HTTPS
    smsgw://USER:PASSWORD@HOST/PATH?to=...                    with HTTP basic auth
    smsgw://HOST/PATH?to=...&token=${SMS_TOKEN}               with "Authorization: Bearer <token>"

Why not httpsms://: apprise already has an `httpsms://` plugin (the httpsms.com service), and a custom
plugin cannot take a scheme apprise already has (apprise refuses the registration).

All numbers of one URL go in ONE request, so the gateway takes the message for all of them or for none:
when it fails, the gateway's sender retries the whole URL without repeating it to a number that got it
(unless the gateway itself half-accepts a request). apprise names the target `smsgw://` whatever the URL
holds (a decorator plugin has no privacy form of its own), so a channel with two such URLs shows them as
`smsgw://` and `smsgw:// #2` in the delivery log.

Loading: apprise loads every module of a folder given as a plugin path, e.g.
`apprise.AppriseAsset(plugin_paths=["/etc/meterwatch/apprise-plugins"])`, or the apprise CLI's
`--plugin-path`. Loading registers the schemes for the whole process.
"""

from __future__ import annotations

from typing import Any

import apprise
import requests

TIMEOUT = (5.0, 15.0)  # connect, read (seconds)


def _numbers(meta: dict[str, Any]) -> list[str]:
    raw = str((meta.get("qsd") or {}).get("to", ""))
    return [n for n in (p.strip() for p in raw.replace(";", ",").split(",")) if n]


def send(body: str, title: str, meta: dict[str, Any], https: bool) -> bool:
    numbers = _numbers(meta)
    if not numbers:
        apprise.logger.warning("SMS gateway: no ?to= numbers in the URL")
        return False
    host = meta.get("host")
    if not host:
        apprise.logger.warning("SMS gateway: no host in the URL")
        return False
    port = f":{meta['port']}" if meta.get("port") else ""
    url = f"{'https' if https else 'http'}://{host}{port}{meta.get('fullpath') or '/'}"
    headers = {"Content-Type": "application/json"}
    token = (meta.get("qsd") or {}).get("token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    auth = (str(meta["user"]), str(meta.get("password") or "")) if meta.get("user") else None
    text = f"{title}\n{body}" if title else body
    try:
        answer = requests.post(
            url,
            json={"to": numbers, "text": text},
            headers=headers,
            auth=auth,
            timeout=TIMEOUT,
            verify=bool(meta.get("verify", True)),
        )
    except requests.RequestException as e:
        apprise.logger.warning("SMS gateway %s%s: %s", host, port, type(e).__name__)
        return False
    if 200 <= answer.status_code < 300:
        return True
    apprise.logger.warning("SMS gateway %s%s answered HTTP %d", host, port, answer.status_code)
    return False


@apprise.decorators.notify(on="smsgw", name="HTTP SMS gateway")
def smsgw(body: str, title: str, notify_type: str, meta: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
    return send(body, title, meta, https=False)


@apprise.decorators.notify(on="smsgws", name="HTTP SMS gateway (HTTPS)")
def smsgws(body: str, title: str, notify_type: str, meta: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
    return send(body, title, meta, https=True)
