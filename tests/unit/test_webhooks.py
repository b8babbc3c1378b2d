"""Alert payloads in each format, their signatures, and the retry policy."""

from __future__ import annotations

import email.utils
import random
from datetime import datetime

import jsonschema
import orjson
import pytest

from streamlearn.alerting import Alert
from streamlearn.webhooks import Webhook, backoff, body, headers, retry_after, verdict, verify

ALERT = Alert(
    dedup_key="ctr/auc-floor/5m",
    sequence=3,
    status="firing",
    rule="auc-floor",
    model="ctr",
    window="5m",
    metric="rolling_auc",
    severity="critical",
    value=0.52,
    threshold=0.6,
    model_version="ctr:v7",
    started_at=1700000000.0,
    at=1700000000.0,
    summary="ctr: rolling_auc over 5m is 0.52, below 0.6",
)
LINK = "http://127.0.0.1:8000/dashboard?model=ctr"


def hook(fmt: str) -> Webhook:
    return Webhook.model_validate(
        {"name": "h", "url": "http://x/", "format": fmt, "secret": "s3", "routing_key": "rk"}
    )


def test_pagerduty_triggers_and_resolves_under_the_alarms_dedup_key() -> None:
    fired = orjson.loads(body(hook("pagerduty"), ALERT, LINK))
    resolved = orjson.loads(
        body(hook("pagerduty"), ALERT.model_copy(update={"status": "resolved"}), LINK)
    )
    assert fired["event_action"] == "trigger" and resolved["event_action"] == "resolve"
    assert fired["dedup_key"] == resolved["dedup_key"] == "ctr/auc-floor/5m"
    assert fired["routing_key"] == "rk" and fired["payload"]["severity"] == "critical"
    assert fired["payload"]["component"] == "ctr:v7" and fired["links"][0]["href"] == LINK


def test_slack_and_generic_carry_the_version_and_the_link() -> None:
    text = orjson.loads(body(hook("slack"), ALERT, LINK))["text"]
    assert "FIRING" in text and "ctr:v7" in text and LINK in text
    generic = orjson.loads(body(hook("generic"), ALERT, LINK))
    assert generic["model_version"] == "ctr:v7" and generic["link"] == LINK
    assert Alert.model_validate({k: v for k, v in generic.items() if k != "link"}) == ALERT


def test_signatures_verify_and_refuse_a_changed_body_another_key_or_an_old_request() -> None:
    payload = body(hook("generic"), ALERT, LINK)
    h = headers(hook("generic"), ALERT, payload, now=1700000000.0)
    assert h["X-Streamlearn-Delivery"] == "ctr/auc-floor/5m#3"
    assert verify(b"s3", h, payload, now=1700000030.0)
    assert not verify(b"s3", h, payload + b" ", now=1700000030.0)
    assert not verify(b"other", h, payload, now=1700000030.0)
    assert not verify(b"s3", h, payload, now=1700001000.0)  # replayed ~17 minutes later
    assert not verify(b"s3", {}, payload, now=1700000030.0)


def test_what_is_retried() -> None:
    assert [verdict(s) for s in (200, 202, 204)] == ["delivered"] * 3
    assert [verdict(s) for s in (None, 429, 500, 502, 503)] == ["retry"] * 5
    assert [verdict(s) for s in (400, 401, 403, 404, 410)] == ["refused"] * 5


def test_retry_after_and_backoff() -> None:
    assert retry_after("7", now=0) == 7.0
    date = email.utils.formatdate(1700000030, usegmt=True)
    assert retry_after(date, now=1700000000) == 30.0
    assert retry_after(None, now=0) is None and retry_after("soon", now=0) is None
    rng = random.Random(0)
    waits = [backoff(a, base_s=0.5, cap_s=30.0, rng=rng) for a in range(20) for _ in range(50)]
    assert all(0 <= w <= 30.0 for w in waits)
    assert max(backoff(0, 0.5, 30.0, rng) for _ in range(100)) <= 0.5
    assert max(waits) > 20  # grows to the cap


# The vendors' request bodies as their documentation states them, as JSON Schema: PagerDuty's
# Events API v2 "Send an Alert Event" (developer.pagerduty.com, events-API-v2, Trigger Events)
# and Slack's incoming webhooks (api.slack.com/messaging/webhooks: a JSON body with ``text``).
ISO_8601 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$"
PAGERDUTY_EVENT = {
    "type": "object",
    "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 1},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "maxLength": 255},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string", "pattern": ISO_8601},
                "component": {"type": "string"},
                "group": {"type": "string"},
                "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
        },
        "images": {
            "type": "array",
            "items": {"type": "object", "required": ["src"]},
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["href"],
                "properties": {"href": {"type": "string"}, "text": {"type": "string"}},
            },
        },
    },
    # A trigger needs its payload; acknowledge and resolve may send one or not.
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
}
SLACK_MESSAGE = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "minLength": 1}},
}


@pytest.mark.parametrize("status", ["firing", "resolved"])
@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_payloads_follow_the_vendors_schemas(status: str, severity: str) -> None:
    alert = ALERT.model_copy(update={"status": status, "severity": severity})
    paged = orjson.loads(body(hook("pagerduty"), alert, LINK))
    jsonschema.validate(paged, PAGERDUTY_EVENT)
    stamp = datetime.fromisoformat(paged["payload"]["timestamp"])
    assert stamp.timestamp() == alert.at and stamp.utcoffset() is not None
    jsonschema.validate(orjson.loads(body(hook("slack"), alert, LINK)), SLACK_MESSAGE)


def test_the_schema_refuses_what_pagerduty_would() -> None:
    """The schema can fail: an RFC 2822 date, as these payloads once carried, is refused."""
    paged = orjson.loads(body(hook("pagerduty"), ALERT, LINK))
    paged["payload"]["timestamp"] = email.utils.formatdate(ALERT.at, usegmt=True)
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(paged, PAGERDUTY_EVENT)
