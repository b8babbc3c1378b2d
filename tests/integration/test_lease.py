"""The monitor's lease on a real Redis: one holder at a time, renewed only by its holder, and
every save fenced by it."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from streamlearn.alerting import Alarms, Rule
from streamlearn.clock import ManualClock
from streamlearn.errors import LeaseLost
from streamlearn.lease import Lease
from streamlearn.outbox import Outbox
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def test_one_holder_at_a_time_and_a_lost_lease_saves_nothing(infra: Infra) -> None:
    client = redis.Redis.from_url(infra.redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    key = f"{prefix}monitor-lease"
    first, second = Lease(client, key, 0.5), Lease(client, key, 0.5)
    outbox = Outbox(client, prefix)
    [alert] = Alarms(
        [Rule(name="r", metric="m", window="w", bad="above", threshold=0.5)], ManualClock(0.0)
    ).observe("ctr", "m", "w", 1.0)

    assert first.acquire() and not second.acquire()
    assert first.acquire()  # its own again: renewed
    outbox.record(b"first", [alert], ["hook"], first)
    assert outbox.state() == b"first" and outbox.head("hook") == alert

    time.sleep(0.7)  # first paused past its time to live: second takes over
    assert not first.held() and second.acquire()
    assert not first.renew()
    with pytest.raises(LeaseLost):
        outbox.record(b"stale", [alert], ["hook"], first)
    assert outbox.state() == b"first"  # nothing saved, nothing queued
    assert client.llen(outbox.queue("hook")) == 1
    outbox.record(b"second", [], ["hook"], second)
    assert outbox.state() == b"second"

    first.release()  # not its own: changes nothing
    assert second.held()
    second.release()
    assert client.get(key) is None
