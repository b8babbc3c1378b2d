"""The loop through infrastructure faults: the Kafka broker restarted mid-stream, Redis (with
``requirepass``, so the loop's every Redis client must authenticate) stopped for longer than a
checkpoint interval. Each runs the joiner, trainer, monitor, API and a storefront
that ranks through the API, and afterwards checks what an operator would: every impression
labeled exactly once, the trainer's learned count equal to the examples, no page from the
monitor, and every event the API accepted during the fault on its topic once, in order."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import httpx
import pytest

from streamlearn.alerting import Alert
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from tests.conftest import (
    PrivateKafka,
    PrivateRedis,
    Processes,
    configure,
    examples,
    records,
    traffic,
    wait_until,
)
from tests.factories import RANK

pytestmark = pytest.mark.integration

LOOP = {
    "STREAMLEARN_PARTITIONS": "2",
    "STREAMLEARN_ATTRIBUTION_WINDOW_S": "3",
    "STREAMLEARN_ALLOWED_LATENESS_S": "1",
    "STREAMLEARN_IDLE_TIMEOUT_S": "3",
    "STREAMLEARN_SIM_RATE": "20",
    "STREAMLEARN_SIM_MEAN_DELAY_S": "1.0",
    "STREAMLEARN_CHECKPOINT_EVERY_N": "500",
    "STREAMLEARN_CHECKPOINT_EVERY_S": "2",
    "STREAMLEARN_MONITOR_EVALUATE_S": "1",
    "STREAMLEARN_JOINER_STATS_S": "1",
}
FAULT_S = 12  # longer than a checkpoint interval, a stats interval and an idle timeout


def start_loop(processes: Processes) -> None:
    for name, module in (("joiner", "consumers.joiner"), ("trainer", "consumers.trainer")):
        processes.start(name, "-m", module)
    processes.start("monitor", "-m", "consumers.monitor")
    processes.start("api", "-m", "api")
    processes.start(
        "simulator", "-m", "consumers.simulator", "--via-api", "--duration", "50", "--drain", "8"
    )


def rank_during_fault(s: Settings, n: int) -> list[str]:
    """What a storefront sends while the fault lasts: ``n`` slates for one user (one partition,
    so their order is checkable); the API must answer every one."""
    ids = []
    with httpx.Client(base_url=f"http://127.0.0.1:{s.api.port}", timeout=10) as client:
        for _ in range(n):
            r = client.post("/v1/rank", json={**RANK, "user_id": "during-the-fault"})
            assert r.status_code == 200 and r.json()["logged"], r.text
            ids.append(r.json()["recommendation_id"])
            time.sleep(FAULT_S / n / 2)
    return ids


def through_a_fault(
    s: Settings, processes: Processes, fault: Callable[[], None], mend: Callable[[], None]
) -> None:
    """The loop running and checkpointing; then the fault while a storefront ranks; then the
    checks of what came through."""
    start_loop(processes)
    store = open_store(s)
    wait_until(lambda: store.latest_version("ctr") is not None, "a first snapshot")
    time.sleep(5)
    fault()
    accepted = rank_during_fault(s, 20)
    mend()
    check_the_loop_came_through(s, processes, accepted)


def check_the_loop_came_through(s: Settings, processes: Processes, accepted: list[str]) -> None:
    assert processes.running["simulator"].wait(240) == 0, processes.log("simulator")
    recs, _, impressions = traffic(s)
    wait_until(lambda: len(examples(s)) >= len(impressions), "every impression joined", every=2)
    time.sleep(6)  # anything emitted twice has time to show
    got = examples(s)
    counts = collections.Counter(e.example_id for e in got)
    assert set(counts) == impressions
    assert max(counts.values()) == 1, counts.most_common(3)

    # The API's events from during the fault: all there, once each, in the order accepted.
    during = [r.recommendation_id for r in recs if r.user_id == "during-the-fault"]
    assert during == accepted

    store = open_store(s)

    def learned_all() -> bool:
        v = store.latest_version("ctr")
        return v is not None and store.meta("ctr", v)["samples_seen"] == len(got)

    wait_until(learned_all, "the trainer to checkpoint every example", every=1)
    assert store.get("ctr").samples_seen == len(got)  # each learned once

    time.sleep(3)  # a monitor's evaluations after the end
    paged = [(a.status, a.dedup_key) for a in records(s, "alerts", Alert)]
    assert paged == [], paged
    for name in ("joiner", "trainer", "monitor", "api"):
        assert processes.running[name].poll() is None, processes.log(name)


def test_a_broker_restart_under_the_running_loop(
    processes: Processes,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    private_kafka: PrivateKafka,
) -> None:
    s = configure(
        processes,
        monkeypatch,
        **{**env, **LOOP, "STREAMLEARN_KAFKA_BOOTSTRAP": private_kafka.bootstrap},
    )
    through_a_fault(s, processes, private_kafka.stop, private_kafka.start)
    assert "transaction aborted" in processes.log("joiner")  # the fault was felt


def test_redis_with_a_password_stopped_longer_than_a_checkpoint_under_the_loop(
    processes: Processes,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    private_redis: PrivateRedis,
) -> None:
    private_redis.stop()
    private_redis.persist = True  # a restart keeps its data, as a production Redis's does
    private_redis.password = "loop-s3cret"  # and AUTH is required: every client has the URL's
    private_redis.start()
    s = configure(
        processes, monkeypatch, **{**env, **LOOP, "STREAMLEARN_REDIS_URL": private_redis.url}
    )
    through_a_fault(s, processes, private_redis.stop, private_redis.start)
    assert "checkpoint of ctr incomplete" in processes.log("trainer")  # the fault was felt
    assert "Redis is away" in processes.log("monitor")
