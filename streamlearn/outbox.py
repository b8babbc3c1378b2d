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
from typing import Any

import httpx
import redis
from prometheus_client import Counter

from streamlearn.alerting import Alert
from streamlearn.errors import LeaseLost
from streamlearn.lease import Lease
from streamlearn.webhooks import Verdict, Webhook, backoff, body, headers, retry_after, verdict

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

    def record(
        self, state: bytes, alerts: list[Alert], webhooks: list[str], lease: Lease | None = None
    ) -> None:
        """Save the state that made the alerts and queue them for every webhook, atomically;
        with ``lease``, only while this process holds it (else :class:`LeaseLost`, and
        nothing is saved or queued)."""
        if lease is None:
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self.state_key, state)
            self._push(pipe, alerts, webhooks)
            pipe.execute()
            return
        with self._r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(lease.key)
                if not lease.held():  # read after WATCH: a change since fails the EXEC
                    raise LeaseLost(f"another process holds {lease.key}")
                pipe.multi()
                pipe.set(self.state_key, state)
                self._push(pipe, alerts, webhooks)
                pipe.execute()
            except redis.WatchError:
                raise LeaseLost(f"{lease.key} changed hands while saving") from None

    def send(self, alerts: list[Alert], webhooks: list[str]) -> None:
        """Queue alerts that no alarm state made (the daily job's) for every webhook: the
        monitor's couriers deliver them with the rest."""
        pipe = self._r.pipeline(transaction=True)
        self._push(pipe, alerts, webhooks)
        pipe.execute()

    def _push(self, pipe: Any, alerts: list[Alert], webhooks: list[str]) -> None:
        if alerts:
            raw = [a.model_dump_json() for a in alerts]
            for w in webhooks:
                pipe.rpush(self.queue(w), *raw)

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
        # The head's delivery id and what the receiver said, until it is off the queue.
        self._settled: tuple[str, Verdict, int | None] | None = None

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set. Redis going away pauses delivery (with backoff) and
        never ends it; an alert the receiver took whose removal from the queue failed is not
        posted again once Redis is back."""
        attempt = 0
        while not stop.is_set():
            try:
                attempt = self._step(stop, attempt)
            except redis.RedisError as exc:
                log.warning("outbox of %s unreachable (%s): retrying", self.webhook.name, exc)
                stop.wait(backoff(attempt, self.base_s, self.cap_s, self.rng))
                attempt += 1

    def _step(self, stop: threading.Event, attempt: int) -> int:
        """Deliver the queue's head, or wait for one; the next attempt number."""
        name = self.webhook.name
        alert = self.outbox.head(name)
        if alert is None:
            stop.wait(0.2)
            return 0
        delivery = f"{alert.dedup_key}#{alert.sequence}"
        if self._settled is None or self._settled[0] != delivery:
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
                stop.wait(delay)
                return attempt + 1
            self._settled = (delivery, outcome, status)
        _, outcome, status = self._settled
        if outcome == "refused":
            log.error("%s refused %s with %s: moved to the dead list", name, delivery, status)
        self.outbox.pop(name, to_dead=outcome == "refused")
        (REFUSED if outcome == "refused" else DELIVERED).labels(name).inc()
        self._settled = None
        return 0

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
