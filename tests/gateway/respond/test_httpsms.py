"""deploy/apprise-plugins/httpsms.py: the example SMS plugin (smsgw://) against a local HTTP receiver."""

from __future__ import annotations

from collections.abc import Callable

import apprise
import pytest

from gateway.respond.model import DeliveryStatus, NoticeState
from gateway.respond.sender import Sender
from tests.fixtures.receiver import Receiver
from tests.gateway.respond.test_sender import MemoryOutbox, channel, notify, render
from tests.helpers import REPO

PLUGINS = REPO / "deploy" / "apprise-plugins"


@pytest.fixture
def asset() -> apprise.AppriseAsset:
    """An asset that loads the deploy/ plugins (registering smsgw:// and smsgws:// for the process)."""
    return apprise.AppriseAsset(plugin_paths=[str(PLUGINS)])


def test_the_plugin_posts_to_and_text_as_json(receiver: Receiver, asset: apprise.AppriseAsset) -> None:
    a = apprise.Apprise(asset=asset)
    assert a.add(f"smsgw://127.0.0.1:{receiver.port}/sms/send?to=13800000000,13900000000&token=T0K")
    with a.notify(title="停电通知", body="3号楼 08:02 起停电") as result:
        assert result.status == apprise.AppriseResultStatus.SUCCESS
    (req,) = receiver.wait_for(1, "/sms/send")
    assert req.method == "POST" and req.headers["Content-Type"] == "application/json"
    assert req.json() == {"to": ["13800000000", "13900000000"], "text": "停电通知\n3号楼 08:02 起停电"}
    assert req.headers["Authorization"] == "Bearer T0K"


def test_the_plugin_reports_a_gateway_error_as_failure(
    receiver: Receiver, asset: apprise.AppriseAsset
) -> None:
    receiver.fail("/sms/send", 503)
    a = apprise.Apprise(asset=asset)
    assert a.add(f"smsgw://127.0.0.1:{receiver.port}/sms/send?to=13800000000")
    with a.notify(body="x") as result:
        (nr,) = result
        assert nr.status == apprise.AppriseResultStatus.FAILURE
        assert any("HTTP 503" in e.message for e in nr.logs())
    assert receiver.count("/sms/send") == 1


def test_no_numbers_is_a_failure_without_a_request(receiver: Receiver, asset: apprise.AppriseAsset) -> None:
    a = apprise.Apprise(asset=asset)
    assert a.add(f"smsgw://127.0.0.1:{receiver.port}/sms/send")
    with a.notify(body="x") as result:
        assert result.status == apprise.AppriseResultStatus.FAILURE
    assert receiver.count() == 0


def test_the_builtin_httpsms_scheme_is_left_alone(asset: apprise.AppriseAsset) -> None:
    # Why the plugin's scheme is smsgw://: httpsms:// is apprise's own plugin (httpsms.com).
    service = apprise.Apprise.instantiate("httpsms://APIKEY@13800000000/13900000000", asset=asset)
    assert service is not None and service.service_name == "httpSMS"


def test_the_sender_sends_sms_through_the_plugin(
    receiver_factory: Callable[[], Receiver], asset: apprise.AppriseAsset
) -> None:
    good, bad = receiver_factory(), receiver_factory()
    bad.fail("/sms")
    url = f"smsgw://127.0.0.1:{good.port}/sms?to=13800000000, smsgw://127.0.0.1:{bad.port}/sms?to=13900000000"
    outbox = MemoryOutbox()
    key = outbox.add("sms", "停电", "3号楼")
    sender = Sender(
        notify(channel("sms", url), retry_max=0.1),
        outbox,
        render,
        asset=asset,
        poll_interval=0.05,
        retry_base=0.05,
    )
    sender.start()
    try:
        bad.wait_for(2, "/sms")
        bad.heal("/sms")
        outbox.wait_state(key, NoticeState.SENT)
    finally:
        assert sender.stop() == []
    assert good.count("/sms") == 1
    assert good.requests("/sms")[0].json() == {"to": ["13800000000"], "text": "停电\n3号楼"}
    first = outbox.records_of(key)[0]
    assert {(d.target, d.status) for d in first.deliveries} == {
        ("smsgw://", DeliveryStatus.SUCCESS),
        ("smsgw:// #2", DeliveryStatus.FAILURE),
    }
