"""Webhook payloads, signatures and the retry policy of alert delivery (no HTTP in here).

Formats:

* ``generic``: the :class:`~streamlearn.alerting.Alert` as JSON, plus ``link``;
* ``pagerduty``: an Events API v2 event: ``trigger`` or ``resolve`` under the alert's dedup key,
  so PagerDuty itself groups the pages of one alarm;
* ``slack``: an incoming-webhook message (``text``).

Every request is signed: ``X-Streamlearn-Timestamp`` (seconds) and ``X-Streamlearn-Signature:
v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``, as Stripe and Slack sign theirs, so a receiver can
check both who sent it and that it is fresh. ``X-Streamlearn-Delivery`` is
``<dedup key>#<sequence>`` and the same on every retry, so a receiver can drop a repeat.

Retries: network errors, timeouts, 429 (honouring ``Retry-After``) and 5xx are retried with
capped exponential backoff and full jitter; any other 4xx is a permanent refusal.

>>> signed = {"X-Streamlearn-Timestamp": "1700000000",
...           "X-Streamlearn-Signature": sign(b"key", 1700000000, b"{}")}
>>> verify(b"key", signed, b"{}", now=1700000010), verify(b"other", signed, b"{}", now=1700000010)
(True, False)
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import random
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from streamlearn.alerting import Alert

Format = Literal["generic", "pagerduty", "slack"]
_PD_SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


class Webhook(BaseModel):
    """One receiver of alerts, as configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    url: str = Field(pattern=r"^https?://")
    format: Format = "generic"
    secret: SecretStr = Field(description="The HMAC key the receiver checks signatures with.")
    routing_key: str | None = Field(None, description="PagerDuty: the integration's key.")
    timeout_s: float = Field(5.0, gt=0)


def body(webhook: Webhook, alert: Alert, link: str) -> bytes:
    """The request body for ``alert`` in the webhook's format."""
    doc: dict[str, Any]
    if webhook.format == "pagerduty":
        doc = {
            "routing_key": webhook.routing_key or "",
            "event_action": "trigger" if alert.status == "firing" else "resolve",
            "dedup_key": alert.dedup_key,
            "payload": {
                "summary": alert.summary,
                "source": f"streamlearn/{alert.model}",
                "severity": _PD_SEVERITY[alert.severity],
                # ISO 8601, as the Events API v2 asks (an RFC 2822 date may be refused).
                "timestamp": datetime.fromtimestamp(alert.at, UTC).isoformat(
                    timespec="milliseconds"
                ),
                "component": alert.model_version or alert.model,
                "group": alert.rule,
                "custom_details": alert.model_dump(),
            },
            "links": [{"href": link, "text": "metrics"}],
        }
    elif webhook.format == "slack":
        icon = ":rotating_light:" if alert.status == "firing" else ":white_check_mark:"
        version = f" ({alert.model_version})" if alert.model_version else ""
        doc = {
            "text": f"{icon} [{alert.severity}] {alert.status.upper()}: {alert.summary}{version}"
            f" <{link}|metrics>"
        }
    else:
        doc = {**alert.model_dump(), "link": link}
    return orjson.dumps(doc)


def sign(secret: bytes, timestamp: int, payload: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + payload, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def headers(webhook: Webhook, alert: Alert, payload: bytes, now: float) -> dict[str, str]:
    ts = int(now)
    return {
        "Content-Type": "application/json",
        "User-Agent": "streamlearn-alerts",
        "X-Streamlearn-Timestamp": str(ts),
        "X-Streamlearn-Signature": sign(webhook.secret.get_secret_value().encode(), ts, payload),
        "X-Streamlearn-Delivery": f"{alert.dedup_key}#{alert.sequence}",
    }


def verify(
    secret: bytes, headers: dict[str, str], payload: bytes, now: float, max_age_s: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        ts = int(headers["X-Streamlearn-Timestamp"])
    except (KeyError, ValueError):
        return False
    given = headers.get("X-Streamlearn-Signature", "")
    return abs(now - ts) <= max_age_s and hmac.compare_digest(given, sign(secret, ts, payload))


Verdict = Literal["delivered", "retry", "refused"]


def verdict(status: int | None) -> Verdict:
    """What a response (None: no response at all) means for delivery."""
    if status is None or status == 429 or status >= 500:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    return "refused"


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def backoff(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0**attempt))
