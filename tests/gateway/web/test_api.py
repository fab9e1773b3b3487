"""The HTTP write API against the real daemon: simulated meters over Modbus TCP, detection, the desk, the
store, the HTTP server; requests sent as any client sends them (urllib, JSON, a bearer token).

One daemon serves the module (its incidents accumulate: each test opens its own and looks only at those).
Waits are on events (the API's answers), never on the clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.receiver import Receiver
from tests.gateway.web.desk_site import DESK, WANG, Api, DeskSite, desk_site

SHANGHAI = "+08:00"  # the live site's time zone, Asia/Shanghai
DAY_2030 = {"start": "2030-01-01T09:00", "end": "2030-01-02T09:00"}  # local times, far from now


@pytest.fixture(scope="module")
def staff() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, staff: Receiver) -> Iterator[DeskSite]:
    with desk_site(tmp_path_factory.mktemp("desk-api"), staff) as site:
        yield site


@pytest.fixture
def api(live: DeskSite) -> Api:
    return Api(live.url)


def error_of(answer: Any) -> str:
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    text = answer["error"]
    assert isinstance(text, str) and text
    return text


# -- access control --------------------------------------------------------------------------------------
WRITES = [
    ("POST", "/api/incidents", {"code": "002", "title": "smoke", "buildings": ["B1"]}),
    ("POST", "/api/incidents/1/ack", None),
    ("POST", "/api/incidents/1/on-site", None),
    ("POST", "/api/incidents/1/note", {"text": "on the way"}),
    ("POST", "/api/incidents/1/eta", {"eta": "2026-12-01T18:00"}),
    ("POST", "/api/incidents/1/cause", {"cause": "a pump"}),
    ("POST", "/api/incidents/1/resolve", {"note": "done"}),
    ("POST", "/api/maintenance", {"id": "w-x", "start": "2030-01-01T09:00", "end": "2030-01-01T10:00"}),
    ("POST", "/api/oncall/overrides", {"oncall": "li", **DAY_2030}),
    ("GET", "/api/oncall", None),
    ("GET", "/api/incidents/1/response", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_missing_token_is_401_and_changes_nothing(api: Api, method: str, path: str, body: Any) -> None:
    before = api.open_ids()
    status, answer = api.call(method, path, body, token=None)
    assert status == 401, answer
    assert "Bearer" in error_of(answer)
    assert api.open_ids() == before


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_wrong_token_is_403_and_changes_nothing(api: Api, method: str, path: str, body: Any) -> None:
    before = api.open_ids()
    status, answer = api.call(method, path, body, token="not-a-configured-token-123")
    assert status == 403, answer
    assert "http.tokens" in error_of(answer)
    assert api.open_ids() == before


def test_other_auth_schemes_and_empty_bearer_are_401(api: Api) -> None:
    for header in ("Basic ZGVzazpwYXNz", "Bearer ", "Token " + DESK):
        status, answer = api.call(
            "POST", "/api/incidents/1/ack", token=None, headers={"Authorization": header}
        )
        assert status == 401, (header, answer)
        assert "Authorization: Bearer" in error_of(answer)


def test_a_bad_body_without_a_token_is_refused_for_the_token_not_the_body(api: Api) -> None:
    status, answer = api.call("POST", "/api/incidents", raw=b"{not json", token=None)
    assert status == 401, answer
    status, answer = api.call("POST", "/api/incidents", raw=b"x" * 200_000, token=None)
    assert status == 401, answer


def test_no_tokens_configured_means_no_writes_403(tmp_path: Path, staff: Receiver) -> None:
    with desk_site(tmp_path, staff, tokens=False) as bare:
        api = Api(bare.url)
        status, answer = api.call("POST", "/api/incidents", {"code": "006", "title": "x"})
        assert status == 403, answer
        assert "no http.tokens" in error_of(answer)
        assert api.open_ids() == []
        status, answer = api.call("GET", "/api/oncall")
        assert status == 403, answer


# -- bad input -------------------------------------------------------------------------------------------
BAD_BODIES: list[tuple[str, str, bytes, list[str]]] = [
    ("not json", "/api/incidents", b'{"code": "002", title', ["not valid JSON", "code, title"]),
    ("a list", "/api/incidents", b'["002", "smoke"]', ["expected a JSON object with the fields code, title"]),
    ("empty", "/api/incidents", b"", ["body is missing", "code, title"]),
    (
        "unknown key",
        "/api/incidents",
        b'{"code": "002", "title": "a", "colour": "red"}',
        ["colour: unknown field", "expected only code, title"],
    ),
    (
        "unknown code",
        "/api/incidents",
        b'{"code": "009", "title": "a"}',
        ["code: unknown event code '009'", "002 (fire)"],
    ),
    ("no title", "/api/incidents", b'{"code": "002"}', ["title: missing"]),
    ("blank title", "/api/incidents", b'{"code": "002", "title": "   "}', ["title: a title is needed"]),
    (
        "long title",
        "/api/incidents",
        b'{"code": "002", "title": "' + b"x" * 201 + b'"}',
        ["title: too long, 201 characters; at most 200"],
    ),
    (
        "bad building id",
        "/api/incidents",
        b'{"code": "002", "title": "a", "buildings": ["B 1"]}',
        ["buildings[0]: 'B 1' is not an id"],
    ),
    (
        "negative households",
        "/api/incidents",
        b'{"code": "002", "title": "a", "households": -3}',
        ["households:", "greater than or equal to 0", "-3"],
    ),
    (
        "bad severity",
        "/api/incidents",
        b'{"code": "002", "title": "a", "severity": "huge"}',
        ["severity:", "critical", "'huge'"],
    ),
    (
        "note too long",
        "/api/incidents/1/note",
        b'{"text": "' + b"n" * 2001 + b'"}',
        ["text: too long, 2001 characters; at most 2000"],
    ),
    ("empty note", "/api/incidents/1/note", b'{"text": ""}', ["text:"]),
    (
        "eta not a time",
        "/api/incidents/1/eta",
        b'{"eta": "tomorrow"}',
        ["eta: expected a local date and time such as 2026-05-10T09:00, got 'tomorrow'"],
    ),
    (
        "eta with offset",
        "/api/incidents/1/eta",
        b'{"eta": "2026-12-01T18:00+08:00"}',
        ["eta: expected the site's local time without an offset"],
    ),
    ("eta missing", "/api/incidents/1/eta", b"{}", ["eta: missing"]),
    (
        "cause too long",
        "/api/incidents/1/cause",
        b'{"cause": "' + b"c" * 501 + b'"}',
        ["cause: too long, 501 characters; at most 500"],
    ),
    ("blank cause", "/api/incidents/1/cause", b'{"cause": "  "}', ["cause: the cause is empty"]),
    ("resolve extra", "/api/incidents/1/resolve", b'{"note": "x", "force": true}', ["force: unknown field"]),
    (
        "window ends first",
        "/api/maintenance",
        b'{"id": "w-bad", "start": "2030-01-01T10:00", "end": "2030-01-01T09:00"}',
        ["must be after start"],
    ),
    (
        "window bad id",
        "/api/maintenance",
        b'{"id": "w bad", "start": "2030-01-01T09:00", "end": "2030-01-01T10:00"}',
        ["id: 'w bad' is not an id"],
    ),
    (
        "override no end",
        "/api/oncall/overrides",
        b'{"oncall": "li", "start": "2030-01-01T09:00"}',
        ["end: missing"],
    ),
]


@pytest.mark.parametrize(
    ("path", "raw", "expected"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_malformed_bodies_are_400_saying_what_where_and_what_was_expected(
    api: Api, path: str, raw: bytes, expected: list[str]
) -> None:
    incident = api.open_manual(title="target of the bad bodies")
    path = path.replace("/1/", f"/{incident}/")
    before_ids, before_view = api.open_ids(), api.ok("GET", f"/api/incidents/{incident}/response")
    status, answer = api.call("POST", path, raw=raw)
    assert status == 400, answer
    text = error_of(answer)
    for part in expected:
        assert part in text, text
    assert api.open_ids() == before_ids
    assert api.ok("GET", f"/api/incidents/{incident}/response") == before_view


def test_every_problem_of_a_body_is_named_at_once(api: Api) -> None:
    body = {"code": "999", "title": "t" * 300, "buildings": ["ok", "not ok"], "extra": 1}
    status, answer = api.call("POST", "/api/incidents", body)
    assert status == 400, answer
    text = error_of(answer)
    for part in ("code:", "title: too long", "buildings[1]:", "extra: unknown field"):
        assert part in text, text


def test_an_oversized_body_is_413_and_read_no_further(api: Api) -> None:
    status, answer = api.call("POST", "/api/incidents", raw=b'{"title": "' + b"x" * 200_000 + b'"}')
    assert status == 413, answer
    assert "larger than 65536 bytes" in error_of(answer)


def test_an_unknown_building_is_400_naming_it_and_the_known_ones(api: Api) -> None:
    before = api.open_ids()
    body = {"code": "002", "title": "a", "buildings": ["B1", "B9"]}
    status, answer = api.call("POST", "/api/incidents", body)
    assert status == 400, answer
    text = error_of(answer)
    assert "B9" in text and "B1, B2" in text, text
    status, answer = api.call(
        "POST",
        "/api/maintenance",
        {"id": "w-b9", "start": "2030-01-01T09:00", "end": "2030-01-01T10:00", "buildings": ["B9"]},
    )
    assert status == 400, answer
    assert "B9" in error_of(answer) and "B1, B2" in error_of(answer)
    assert api.open_ids() == before


@pytest.mark.parametrize("raw_id", ["99999999999999999999", "0", "-1", "abc", "1.5"])
def test_ids_that_cannot_exist_are_a_clean_404(api: Api, raw_id: str) -> None:
    for method, action, body in (
        ("POST", "ack", None),
        ("POST", "note", {"text": "x"}),
        ("GET", "response", None),
    ):
        status, answer = api.call(method, f"/api/incidents/{raw_id}/{action}", body)
        assert status == 404, (action, answer)
        assert f"no incident {raw_id}" in error_of(answer)


def test_an_id_no_incident_has_is_404(api: Api) -> None:
    missing = max(api.open_ids(), default=0) + 1000
    for method, action, body in (("POST", "ack", None), ("GET", "response", None)):
        status, answer = api.call(method, f"/api/incidents/{missing}/{action}", body)
        assert status == 404, answer
        assert str(missing) in error_of(answer)


# -- a manual incident, start to end ---------------------------------------------------------------------
def test_a_manual_002_incident_is_listed_dispatched_and_in_the_timeline(api: Api, staff: Receiver) -> None:
    title = "smoke in the B1 stairwell"
    incident = api.open_manual(title=title, note="caller: flat 301, smells burning")
    listed = {i["id"]: i for i in api.ok("GET", "/api/incidents?state=open")["incidents"]}
    assert incident in listed, listed
    inc = listed[incident]
    assert (inc["event_code"], inc["title"], inc["severity"]) == ("002", title, "critical")
    assert inc["scope"] == "building:B1" and inc["households"] == 40  # B1's, from the site file
    assert inc["evidence"] == ["reported by desk (event code 002, fire)"]

    steps = [(e["event"], e["detail"]) for e in api.incident(incident)["timeline"]]
    assert steps[:2] == [("opened", title), ("note", "desk: caller: flat 301, smells burning")], steps
    assert ("dispatched", "oncall: Wang Wei") in steps, steps
    assert all(e["at"].endswith(SHANGHAI) for e in api.incident(incident)["timeline"])

    view = api.ok("GET", f"/api/incidents/{incident}/response")
    assert view["incident_id"] == incident and view["manual"] is True
    assert view["called"] == ["oncall:wang"] and view["dispatched_at"].endswith(SHANGHAI)
    assert [(n["who"], n["text"]) for n in view["notes"]] == [("desk", "caller: flat 301, smells burning")]

    # the staff channel hears of it (apprise json:// to the receiver)
    staff.wait(lambda reqs: any(title in r.body.decode("utf-8") for r in reqs), timeout=60, what=title)


def test_staff_actions_are_reflected_in_the_response_view(api: Api) -> None:
    incident = api.open_manual(code="003", title="lift stuck between floors", buildings=["B2"])
    base = f"/api/incidents/{incident}"

    acked = api.ok("POST", f"{base}/ack")
    assert acked["acked_by"] == "desk" and acked["acked_at"].endswith(SHANGHAI)
    assert datetime.fromisoformat(acked["acked_at"]).timestamp() == pytest.approx(acked["acked_ts"], abs=1)
    # the first acknowledgement counts: another person's is recorded but does not replace it
    again = Api(api.base, WANG).ok("POST", f"{base}/ack")
    assert again["acked_by"] == "desk" and again["acked_ts"] == acked["acked_ts"]

    on_site = Api(api.base, WANG).ok("POST", f"{base}/on-site")
    assert on_site["on_site_by"] == "wang-phone" and on_site["on_site_at"].endswith(SHANGHAI)

    noted = api.ok("POST", f"{base}/note", {"text": "technician called"})
    assert ("desk", "technician called") in [(n["who"], n["text"]) for n in noted["notes"]]

    eta = api.ok("POST", f"{base}/eta", {"eta": "2030-12-01T18:00"})
    assert eta["eta_at"] == "2030-12-01T18:00:00+08:00"
    assert eta["eta_ts"] == datetime.fromisoformat("2030-12-01T18:00:00+08:00").timestamp()
    cleared = api.ok("POST", f"{base}/eta", {"eta": None})
    assert cleared["eta_at"] is None and cleared["eta_ts"] is None

    caused = api.ok("POST", f"{base}/cause", {"cause": "worn brake"})
    assert caused["cause"] == "worn brake"

    resolved = api.ok("POST", f"{base}/resolve", {"note": "lift restarted"})
    assert api.ok("GET", f"{base}/response") == resolved
    detail = api.incident(incident)
    assert detail["state"] == "resolved"

    # every action is a step of the timeline, in order, with who did it
    steps = [(e["event"], e["detail"]) for e in detail["timeline"]]
    events = [e for e, _ in steps]
    acted = ["acknowledged", "on_site", "note", "eta", "eta", "cause", "resolved"]
    assert [e for e in events if e in set(acted)] == acted, steps
    assert ("acknowledged", "by desk") in steps and ("on_site", "by wang-phone") in steps
    assert ("note", "desk: technician called") in steps
    assert ("cause", "desk: worn brake") in steps
    assert ("resolved", "resolved by desk: lift restarted") in steps

    # a resolved incident is not acknowledged any more: 409, and nothing changes
    status, answer = api.call("POST", f"{base}/ack")
    assert status == 409, answer
    assert f"incident {incident} is resolved" in error_of(answer)
    assert api.ok("GET", f"{base}/response") == resolved
    assert len(api.incident(incident)["timeline"]) == len(steps)


def test_resolving_a_detected_incident_is_409(live: DeskSite, api: Api) -> None:
    incident = api.detected_power_incident(live, "B2")
    try:
        status, answer = api.call("POST", f"/api/incidents/{incident}/resolve", {"note": "it is fine"})
        assert status == 409, answer
        assert error_of(answer)
        assert api.incident(incident)["state"] != "resolved"
        # staff can still take it on
        assert api.ok("POST", f"/api/incidents/{incident}/ack")["acked_by"] == "desk"
    finally:
        live.sim.world.restore_power("B2")


# -- maintenance and on-call -----------------------------------------------------------------------------
def test_a_maintenance_window_is_declared_once_and_its_id_kept(api: Api) -> None:
    window = {
        "id": "b1-pump",
        "start": "2030-05-10T09:00",
        "end": "2030-05-10T12:00",
        "buildings": ["B1"],
        "note": "pump replacement",
    }
    created = api.ok("POST", "/api/maintenance", window, status=201)
    assert created == {"id": "b1-pump", "start": "2030-05-10T09:00", "end": "2030-05-10T12:00"}
    # the same request again (a retry) is the same window: answered alike, nothing declared twice
    assert api.ok("POST", "/api/maintenance", window, status=201) == created
    # another window under that id is refused
    status, answer = api.call("POST", "/api/maintenance", {**window, "end": "2030-05-10T13:00"})
    assert status == 409, answer
    assert "b1-pump" in error_of(answer)


def test_oncall_shows_the_roster_and_takes_an_override(api: Api) -> None:
    now = api.ok("GET", "/api/oncall")
    assert now["oncall"] == {"id": "wang", "name": "Wang Wei", "phone": "13800000001"}
    assert now["backup"]["id"] == "li" and now["supervisor"]["id"] == "zhao" and now["manager"] is None
    assert now["override"] is False and now["at"].endswith(SHANGHAI)

    status, answer = api.call("POST", "/api/oncall/overrides", {"oncall": "nobody", **DAY_2030})
    assert status == 400, answer
    assert "nobody" in error_of(answer) and "wang, li, zhao" in error_of(answer)

    # the answer is who holds on-call from the override's start; now, the roster still decides
    later = api.ok("POST", "/api/oncall/overrides", {"oncall": "zhao", "backup": "wang", **DAY_2030})
    assert later["at"] == "2030-01-01T09:00:00+08:00"
    assert later["oncall"]["id"] == "zhao" and later["backup"]["id"] == "wang" and later["override"] is True
    assert api.ok("GET", "/api/oncall")["oncall"]["id"] == "wang"

    # one covering now does (the last test of the module: nothing after it depends on the roster)
    local_now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, second=0, microsecond=0)
    window = {
        "oncall": "zhao",
        "start": (local_now - timedelta(hours=1)).isoformat(),
        "end": (local_now + timedelta(hours=1)).isoformat(),
    }
    current = api.ok("POST", "/api/oncall/overrides", window)
    assert current["oncall"]["id"] == "zhao" and current["override"] is True
    shown = api.ok("GET", "/api/oncall")
    assert shown["oncall"]["id"] == "zhao" and shown["override"] is True
