"""Promotion on off-policy evidence, on the real broker: the gate promotes the better
challenger, the API then serves it under the champion's name, and a forced degradation of the
promoted model rolls it back.

No trainer runs: the models are trained here on the storefront's own world (the simulator's
seed), so what each is worth is known. ``ctr`` is untrained (it ranks at random), the
challenger ``ctr-aware`` learned 30,000 labeled impressions; its degraded version learned the
same with every label flipped, so it ranks what converts last.
"""

from __future__ import annotations

import json

import httpx
import pytest

from streamlearn.alerting import Alert
from streamlearn.clock import ManualClock
from streamlearn.events import Recommendation
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.simulation import Storefront
from streamlearn.snapshots import open_store
from streamlearn.snapshots.base import Snapshot
from streamlearn.training import Training
from tests.conftest import Processes, configure, records, served_model, wait_until
from tests.integration.test_loop import loop_env

pytestmark = pytest.mark.integration

AWARE = ModelSpec(name="ctr-aware")


def model(settings: Settings, spec: ModelSpec, version: int, flipped: bool = False) -> Snapshot:
    training = Training(spec, ManualClock(0.0))
    if version or flipped:
        shop = Storefront(world_seed=settings.sim_seed, traffic_seed=version)
        for n, e in enumerate(shop.labeled_examples(30_000)):
            training.learn(e.model_copy(update={"label": e.label != flipped}), 0, n)
    return training.snapshot(max(version, 1))


def test_the_gate_promotes_the_better_challenger_and_rolls_back_its_degradation(
    processes: Processes, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(
        processes,
        monkeypatch,
        **loop_env(env),
        STREAMLEARN_CHALLENGERS=json.dumps([AWARE.model_dump(mode="json")]),
        # More exploration than the default 5%: evidence in seconds rather than minutes.
        STREAMLEARN_EXPLORE_EPSILON="0.3",
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR__PROMOTION__ENABLED="true",
        STREAMLEARN_MONITOR__PROMOTION__MIN_SLATES="300",
        STREAMLEARN_MONITOR__PROMOTION__HOLD_S="2",
        STREAMLEARN_MONITOR__PROMOTION__COOLDOWN_S="0",
    )
    assert settings.monitor.promotion.enabled and settings.challengers == [AWARE]
    store = open_store(settings)
    registry = Registry(store)
    store.put(model(settings, settings.model, 0))  # untrained: ranks at random
    store.put(model(settings, AWARE, 1))
    for name in ("joiner", "monitor", "api"):
        processes.start(name, "-m", f"consumers.{name}" if name != "api" else "api")
    base = f"http://127.0.0.1:{settings.api.port}"
    wait_until(lambda: served_model(base) == ("ctr", 1), "the API serving ctr")
    sim = processes.start(
        "simulator", "-m", "consumers.simulator", "--via-api", "--duration", "240", "--drain", "5"
    )

    wait_until(lambda: registry.serving("ctr") == ("ctr-aware", 1), "the gate to promote", every=1)
    # The API serves it under the champion's name; the champion scores in shadow.
    wait_until(lambda: served_model(base) == ("ctr-aware", 1), "the swap")
    assert httpx.get(f"{base}/healthz").json()["served_as"] == "ctr"
    alerts = records(settings, "alerts", Alert)
    [promoted] = [a for a in alerts if a.rule == "auto-promotion" and a.status == "firing"]
    assert promoted.model == "ctr" and promoted.model_version == "ctr-aware:v1"
    assert "ctr-aware promoted over ctr" in promoted.summary
    assert "Evidence (dr, anytime bounds): ctr " in promoted.summary
    assert promoted.value > promoted.threshold  # its estimate, above the bound it beat

    # Degrade the promoted model: its next version ranks what converts last.
    store.put(model(settings, AWARE, 2, flipped=True))
    wait_until(lambda: served_model(base) == ("ctr-aware", 2), "v2 served")
    wait_until(lambda: registry.serving("ctr") == ("ctr", 1), "the rollback", every=1)
    wait_until(lambda: served_model(base) == ("ctr", 1), "the swap back")
    alerts = records(settings, "alerts", Alert)
    [rolled] = [a for a in alerts if a.rule == "auto-rollback" and a.status == "firing"]
    assert rolled.dedup_key == "ctr/auto-rollback/promotion-gate"
    assert "ctr-aware fell below the bound it was promoted on" in rolled.summary
    assert rolled.threshold == promoted.threshold
    sim.terminate()
    sim.wait(30)

    # What was served, as the recommendations say: ctr, then ctr-aware v1 and v2, then ctr.
    served = [r.model_version for r in records(settings, "recommendations", Recommendation)]
    assert {"ctr:v1", "ctr-aware:v1", "ctr-aware:v2"} <= set(served)
    board = httpx.get(f"{base}/v1/monitor").json()
    assert board["current"]["serving"] == "ctr"
    assert set(board["current"]["evidence"]) <= {"ctr", "ctr-aware"}
