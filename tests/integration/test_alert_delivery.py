"""Alert delivery through the Redis outbox to a webhook receiver started here, which checks
every signature: an outage, then 500s and a 429, lose nothing and repeat nothing; a refusal goes
to the dead list; a restart mid-incident neither pages again nor forgets the resolve."""

from __future__ import annotations

import threading
import uuid

import orjson
import pytest
import redis

from streamlearn.alerting import Alarms, Alert, Rule
from streamlearn.clock import ManualClock
from streamlearn.outbox import Outbox
from tests.conftest import Infra, PrivateRedis, courier, wait_until
from tests.factories import Receiver

pytestmark = pytest.mark.integration

RULE = Rule(name="auc-floor", metric="rolling_auc", window="5m", bad="below", threshold=0.6)


@pytest.fixture
def outbox(infra: Infra) -> Outbox:
    return Outbox(redis.Redis.from_url(infra.redis_url), f"t{uuid.uuid4().hex[:8]}.")


def incidents(book: Alarms, clock: ManualClock, outbox: Outbox, values: list[float]) -> list[Alert]:
    """Values for two models in turn; every change of state recorded as the monitor does."""
    made = []
    for v in values:
        clock.advance(10)
        for model in ("ctr", "other"):
            alerts = book.observe(model, "rolling_auc", "5m", v, f"{model}:v1")
            outbox.record(orjson.dumps(book.dump()), alerts, ["oncall"])
            made += alerts
    return made


def test_an_outage_then_errors_lose_nothing_and_repeat_nothing(
    outbox: Outbox, receiver: Receiver
) -> None:
    clock = ManualClock(0.0)
    book = Alarms([RULE], clock)
    _, stop, thread = courier(outbox, receiver.port)
    try:
        # The receiver is down (nothing listens) while two incidents fire and resolve.
        made = incidents(book, clock, outbox, [0.5, 0.7, 0.4, 0.8])
        assert len(made) == 8
        wait_until(lambda: outbox.pending("oncall") == 8, "the alerts queued")
        receiver.script = [(500, {}), (503, {}), (429, {"Retry-After": "1"})]
        receiver.start()
        wait_until(lambda: outbox.pending("oncall") == 0, "every alert delivered")
    finally:
        stop.set()
        thread.join()
    assert receiver.answered[:3] == [500, 503, 429]
    assert receiver.bad_signatures == 0
    ids = [d for d, _ in receiver.accepted]
    assert len(ids) == len(set(ids)) == 8  # none twice
    assert [(p["dedup_key"], p["sequence"], p["status"]) for _, p in receiver.accepted] == [
        (a.dedup_key, a.sequence, a.status) for a in made
    ]  # in the order they were made
    assert all(p["link"] == f"http://dash/{p['model']}" for _, p in receiver.accepted)


def test_a_refusal_goes_to_the_dead_list_and_the_rest_still_arrives(
    outbox: Outbox, receiver: Receiver
) -> None:
    clock = ManualClock(0.0)
    book = Alarms([RULE], clock)
    receiver.script = [(400, {})]
    receiver.start()
    made = incidents(book, clock, outbox, [0.5, 0.7])
    _, stop, thread = courier(outbox, receiver.port)
    try:
        wait_until(lambda: outbox.pending("oncall") == 0, "the queue emptied")
    finally:
        stop.set()
        thread.join()
    dead = [Alert.model_validate_json(x) for x in outbox._r.lrange(outbox.dead("oncall"), 0, -1)]
    assert dead == made[:1]
    assert [(p["dedup_key"], p["sequence"]) for _, p in receiver.accepted] == [
        (a.dedup_key, a.sequence) for a in made[1:]
    ]


def test_a_restart_mid_incident_does_not_page_again_and_still_resolves(
    outbox: Outbox, receiver: Receiver
) -> None:
    clock = ManualClock(0.0)
    receiver.start()
    first = Alarms([RULE], clock)
    _, stop, thread = courier(outbox, receiver.port)
    incidents(first, clock, outbox, [0.5, 0.5])
    wait_until(lambda: len(receiver.accepted) == 2, "the two pages")
    stop.set()
    thread.join()

    # A new monitor: its alarms from Redis, a new courier, the incident still going on.
    again = Alarms([RULE], clock)
    saved = outbox.state()
    assert saved is not None
    again.load(orjson.loads(saved))
    _, stop, thread = courier(outbox, receiver.port)
    try:
        assert incidents(again, clock, outbox, [0.5, 0.5]) == []
        resolved = incidents(again, clock, outbox, [0.9])
        wait_until(lambda: len(receiver.accepted) == 4, "the two resolves")
    finally:
        stop.set()
        thread.join()
    statuses = [(p["dedup_key"], p["status"]) for _, p in receiver.accepted]
    assert statuses == [
        ("ctr/auc-floor/5m", "firing"),
        ("other/auc-floor/5m", "firing"),
        ("ctr/auc-floor/5m", "resolved"),
        ("other/auc-floor/5m", "resolved"),
    ]
    assert [a.sequence for a in resolved] == [2, 2]


def test_a_redis_restart_mid_delivery_delivers_everything_in_order_once(
    private_redis: PrivateRedis, receiver: Receiver
) -> None:
    """Redis goes away just as the receiver takes the third alert, before the courier removes it
    from the queue, and comes back a second later: the courier keeps going, does not post the
    third again, and delivers the rest in order."""
    private_redis.stop()
    private_redis.persist = True
    private_redis.start()
    outbox = Outbox(redis.Redis.from_url(private_redis.url), "t.")
    clock = ManualClock(0.0)
    made = incidents(Alarms([RULE], clock), clock, outbox, [0.5, 0.7, 0.4])
    assert len(made) == 6

    def restart_redis_at_the_third(accepted: int) -> None:
        if accepted == 3:
            private_redis.stop()
            threading.Timer(1.0, private_redis.start).start()

    receiver.on_accept = restart_redis_at_the_third
    receiver.start()
    _, stop, thread = courier(outbox, receiver.port)
    try:
        wait_until(lambda: len(receiver.accepted) >= 6 and outbox.pending("oncall") == 0, "all")
    finally:
        stop.set()
        thread.join()
    assert [d for d, _ in receiver.accepted] == [f"{a.dedup_key}#{a.sequence}" for a in made]
