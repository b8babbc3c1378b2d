"""The durable outbox of alert delivery, in Redis, and the loop that empties it.

The monitor records a change of alarm state and queues its alert for every webhook in one Redis
transaction (:meth:`Outbox.record`): an alert is queued if and only if the state that made it is
saved, so a monitor killed at any point neither loses a page nor, once restarted, makes it again.

Each webhook has its own queue (a Redis list) and its own :class:`Courier`, which delivers the
head of the queue and removes it only once the receiver has accepted it (2xx). Network errors,
timeouts, 429 and 5xx are retried with capped, jittered backoff (honouring ``Retry-After``) for as
long as it takes, so a receiver that is down for minutes gets every alert when it returns, in the
order they were made; another 4xx is a refusal that retrying cannot fix: the alert moves to the
webhook's dead list, and the log and metrics say so. A courier killed between a receiver's 2xx
and the removal delivers that one alert again when it restarts: delivery is at least once, and
the ``X-Streamlearn-Delivery`` header (the same on every attempt) lets a receiver drop the repeat.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import httpx
import redis
from prometheus_client import Counter

from streamlearn.alerting import Alert
from streamlearn.webhooks import Webhook, backoff, body, headers, retry_after, verdict

log = logging.getLogger("streamlearn.outbox")

DELIVERED = Counter("streamlearn_alerts_delivered_total", "Alerts a webhook accepted.", ["webhook"])
ATTEMPTS_FAILED = Counter(
    "streamlearn_alert_attempts_failed_total",
    "Delivery attempts that will be retried (network error, timeout, 429, 5xx).",
    ["webhook"],
)
REFUSED = Counter(
    "streamlearn_alerts_refused_total", "Alerts a webhook refused for good (4xx).", ["webhook"]
)


class Outbox:
    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self._r = client
        self._p = prefix

    def queue(self, webhook: str) -> str:
        return f"{self._p}outbox:{webhook}"

    def dead(self, webhook: str) -> str:
        return f"{self._p}outbox-dead:{webhook}"

    @property
    def state_key(self) -> str:
        return f"{self._p}monitor-state"

    def record(self, state: bytes, alerts: list[Alert], webhooks: list[str]) -> None:
        """Save the state that made the alerts and queue them for every webhook, atomically."""
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self.state_key, state)
        if alerts:
            raw = [a.model_dump_json() for a in alerts]
            for w in webhooks:
                pipe.rpush(self.queue(w), *raw)
        pipe.execute()

    def state(self) -> bytes | None:
        return self._r.get(self.state_key)

    def head(self, webhook: str) -> Alert | None:
        raw = self._r.lindex(self.queue(webhook), 0)
        return None if raw is None else Alert.model_validate_json(raw)

    def pop(self, webhook: str, to_dead: bool = False) -> None:
        if to_dead:
            self._r.lmove(self.queue(webhook), self.dead(webhook), "LEFT", "RIGHT")
        else:
            self._r.lpop(self.queue(webhook))

    def pending(self, webhook: str) -> int:
        return int(self._r.llen(self.queue(webhook)))


class Courier:
    """Delivers one webhook's queue, in order, until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        webhook: Webhook,
        link: Callable[[Alert], str],
        base_s: float = 0.5,
        cap_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.webhook = webhook
        self.link = link
        self.base_s, self.cap_s = base_s, cap_s
        self.rng = rng or random.Random()
        self.client = httpx.Client(timeout=webhook.timeout_s)

    def run(self, stop: threading.Event) -> None:
        attempt = 0
        name = self.webhook.name
        while not stop.is_set():
            try:
                alert = self.outbox.head(name)
            except redis.RedisError as exc:
                log.warning("outbox of %s unreadable (%s): retrying", name, exc)
                stop.wait(backoff(attempt, self.base_s, self.cap_s, self.rng))
                attempt += 1
                continue
            if alert is None:
                stop.wait(0.2)
                continue
            status, wait = self._post(alert)
            outcome = verdict(status)
            if outcome == "retry":
                ATTEMPTS_FAILED.labels(name).inc()
                delay = max(wait or 0.0, backoff(attempt, self.base_s, self.cap_s, self.rng))
                log.warning(
                    "%s: %s not delivered (%s), attempt %d, next in %.1fs",
                    name,
                    alert.dedup_key,
                    status or "no answer",
                    attempt + 1,
                    delay,
                )
                attempt += 1
                stop.wait(delay)
                continue
            attempt = 0
            if outcome == "refused":
                REFUSED.labels(name).inc()
                log.error(
                    "%s refused %s#%d with %s: moved to the dead list",
                    name,
                    alert.dedup_key,
                    alert.sequence,
                    status,
                )
                self.outbox.pop(name, to_dead=True)
            else:
                DELIVERED.labels(name).inc()
                self.outbox.pop(name)

    def _post(self, alert: Alert) -> tuple[int | None, float | None]:
        payload = body(self.webhook, alert, self.link(alert))
        try:
            r = self.client.post(
                self.webhook.url,
                content=payload,
                headers=headers(self.webhook, alert, payload, time.time()),
            )
        except httpx.HTTPError:
            return None, None
        return r.status_code, retry_after(r.headers.get("retry-after"), time.time())
