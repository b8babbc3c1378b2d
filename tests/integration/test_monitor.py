"""The monitor as its own process on the real broker and Redis, paging a receiver started here:
a flip of the hidden preferences pages once and resolves once, across a SIGKILL of the monitor
mid-incident (a second monitor stood by, and takes over when the lease expires); a shift of the
prices raises a data-drift alarm naming the feature."""

from __future__ import annotations

import json
import signal
import time

import pytest

from streamlearn.alerting import Alert
from streamlearn.clock import ManualClock
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.simulation import Deployed
from streamlearn.snapshots import open_store
from tests.conftest import Processes, configure, produce_examples, read_topic, wait_until
from tests.factories import Receiver, example, trained

pytestmark = pytest.mark.integration


def send(s: Settings, world: Deployed, n: int) -> None:
    produce_examples(s, world.examples(n))


def pages(receiver: Receiver, key_part: str) -> list[str]:
    return [p["status"] for _, p in receiver.accepted if key_part in str(p["dedup_key"])]


def test_drift_pages_once_resolves_once_across_a_sigkill_and_names_a_shifted_feature(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    hook = receiver.webhook()
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR_REFERENCE_SIZE="2000",
        STREAMLEARN_MONITOR_RECOVERY_EXAMPLES="3000",
        STREAMLEARN_WEBHOOKS=json.dumps([hook]),
        STREAMLEARN_MONITOR_METRICS_PORT="0",
        STREAMLEARN_MONITOR_LEASE_S="3",
    )
    world = Deployed(ManualClock(1_700_000_000.0))
    send(s, world, 15_000)  # learned and steady
    world.shop.flip()
    send(s, world, 3_000)  # the concept changes: the served model's loss rises
    processes.start("monitor", "-m", "consumers.monitor")
    wait_until(lambda: "this monitor acts" in processes.log("monitor"), "the first to act")
    processes.start("monitor-standby", "-m", "consumers.monitor")
    wait_until(lambda: "standing by" in processes.log("monitor-standby"), "the second to wait")
    receiver.script = [(500, {})]  # the receiver comes up failing, then recovers
    receiver.start()
    wait_until(lambda: pages(receiver, "concept-drift") == ["firing"], "the concept-drift page")

    first = processes.running["monitor"]
    first.send_signal(signal.SIGKILL)  # mid-incident
    first.wait()
    send(s, world, 27_000)  # the model relearns; the loss settles
    wait_until(
        lambda: pages(receiver, "concept-drift") == ["firing", "resolved"],
        "the resolve, after the restart",
    )
    world.shop.shift_prices(3.0)
    send(s, world, 4_000)
    wait_until(lambda: pages(receiver, "psi:i:price") == ["firing"], "the price-drift page")

    assert receiver.bad_signatures == 0
    assert pages(receiver, "concept-drift") == ["firing", "resolved"]  # none twice
    ids = [d for d, _ in receiver.accepted]
    assert len(ids) == len(set(ids))
    fired = next(p for _, p in receiver.accepted if "psi:i:price" in str(p["dedup_key"]))
    assert fired["metric"] == "psi:i:price" and fired["model_version"] == "ctr:v1"
    assert not [p for _, p in receiver.accepted if "psi:i:category" in str(p["dedup_key"])]
    assert "restored: 1 alarms firing" in processes.log("monitor-standby")


def test_outcomes_that_stop_raise_a_join_health_alarm(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """The real joiner and simulator; the storefront's outcomes stop after 12 s."""
    hook = receiver.webhook()
    rule = {
        "name": "outcomes-stopped",
        "metric": "outcome_rate",
        "window": "stream",
        "bad": "below",
        "threshold": 0.001,
        "for_s": 4,
    }
    configure(
        processes,
        monkeypatch,
        STREAMLEARN_MONITOR_RULES=json.dumps([rule]),
        STREAMLEARN_WEBHOOKS=json.dumps([hook]),
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR_METRICS_PORT="0",
        STREAMLEARN_JOINER_STATS_S="1",
        STREAMLEARN_SIM_RATE="20",
        STREAMLEARN_SIM_MEAN_DELAY_S="0.5",
    )
    receiver.start()
    processes.start("joiner", "-m", "consumers.joiner")
    processes.start("monitor", "-m", "consumers.monitor")
    wait_until(lambda: "assigned partitions" in processes.log("joiner"), "the joiner to start")
    started = time.time()
    processes.start(
        "simulator", "-m", "consumers.simulator", "--duration", "60", "--outcomes-until", "12"
    )
    wait_until(lambda: pages(receiver, "join/outcomes-stopped") == ["firing"], "the join page")
    page = next(p for _, p in receiver.accepted if p["dedup_key"] == "join/outcomes-stopped/stream")
    assert float(str(page["at"])) >= started + 12 + 4  # not before the outcomes had stopped
    assert page["severity"] == "error" and page["value"] == 0


def test_a_crash_between_a_rollback_and_the_save_rolls_back_once(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor is killed right after an automatic rollback, before it saves: restarted, it
    neither rolls back a second time nor says so twice, and it does say it once."""
    busy = {"name": "busy", "metric": "count", "window": "5m", "bad": "above", "threshold": 10}
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR_RULES=json.dumps([busy]),
        STREAMLEARN_MONITOR_WARMUP_EXAMPLES="0",  # its 100 examples judged at once
        STREAMLEARN_AUTO_ACTION="rollback",
        STREAMLEARN_AUTO_ACTION_RULES='["busy"]',
        STREAMLEARN_MONITOR_METRICS_PORT="0",
    )
    store = open_store(s)
    registry = Registry(store)
    for version in (1, 2):
        store.put(trained(version))
        registry.promote("ctr", version)
    now = time.time()
    served = [
        example(n % 2 == 0).model_copy(
            update={
                "example_id": f"r{n}:i",
                "served_score": 0.5,
                "model_version": "ctr:v2",
                "recommendation_time": now,
            }
        )
        for n in range(100)
    ]
    produce_examples(s, served)

    processes.env["STREAMLEARN_FAILPOINT"] = "monitor.acted"
    first = processes.start("monitor", "-m", "consumers.monitor")
    del processes.env["STREAMLEARN_FAILPOINT"]
    assert first.wait(120) == -signal.SIGKILL  # killed by the failpoint, after acting
    assert registry.served_version("ctr") == 1

    processes.start("monitor-restarted", "-m", "consumers.monitor")

    def told() -> list[Alert]:
        raw = read_topic(s.kafka_bootstrap, s.topic("alerts"))
        alerts = [Alert.model_validate_json(v) for _, _, v in raw]
        return [a for a in alerts if a.rule == "auto-rollback"]

    wait_until(lambda: len(told()) >= 2, "the rollback announced")
    time.sleep(3)  # a few more evaluations: nothing more may come
    assert [(a.status, a.severity) for a in told()] == [("firing", "info"), ("resolved", "info")]
    assert "rolled back from ctr:v2 to ctr:v1" in told()[0].summary
    assert registry.served_version("ctr") == 1
    assert store.read_registry("ctr").history == {"champion": []}  # one rollback, not two
