"""The trainer on the real broker and Redis: exactly-once learning through crashes at every step
of a checkpoint, and progressive validation identical to River's own."""

from __future__ import annotations

import json
import math
import random

import httpx
import pytest
import redis
from river import evaluate, metrics

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample
from streamlearn.features import example_features
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from streamlearn.training import Training, TrainingPolicy
from tests.conftest import (
    PrivateRedis,
    Processes,
    configure,
    free_port,
    produce,
    produce_examples,
    trainer_committed,
    wait_until,
)
from tests.factories import example

pytestmark = pytest.mark.integration

N = 1200


def stream(seed: int = 11) -> list[LabeledExample]:
    """Examples whose label depends on segment x category, as the storefront's do."""
    rng = random.Random(seed)
    out = []
    for n in range(N):
        segment, category = rng.choice("abc"), rng.choice("xyz")
        p = 0.7 if (segment, category) in {("a", "x"), ("b", "y"), ("c", "z")} else 0.15
        e = example(rng.random() < p, segment)
        out.append(
            e.model_copy(
                update={
                    "example_id": f"r{n}:i",
                    "item_features": {"category": category, "price": rng.uniform(1, 50)},
                }
            )
        )
    return out


def start(processes: Processes, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_CHECKPOINT_EVERY_N="100",
        STREAMLEARN_CHECKPOINT_EVERY_S="60",
        **extra,
    )
    produce_examples(s, stream())
    return s


def learned_all(s: Settings) -> bool:
    store = open_store(s)
    v = store.latest_version("ctr")
    return v is not None and store.meta("ctr", v)["samples_seen"] >= N


@pytest.mark.parametrize(
    "failpoint",
    [
        "trainer.learned:700",  # between checkpoints (batches hold at most 500)
        "trainer.before_snapshot:3",  # just before the third snapshot is written
        "trainer.after_snapshot:3",  # the third snapshot written, its offsets not committed
    ],
)
def test_sigkill_at_every_step_learns_each_example_once(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, failpoint: str
) -> None:
    s = start(processes, monkeypatch)
    processes.env["STREAMLEARN_FAILPOINT"] = failpoint
    first = processes.start("trainer", "-m", "consumers.trainer")
    assert first.wait(120) == -9, "the failpoint should have killed the trainer"
    del processes.env["STREAMLEARN_FAILPOINT"]
    assert open_store(s).latest_version("ctr") is not None  # it died with work done
    processes.start("trainer-restarted", "-m", "consumers.trainer")
    wait_until(lambda: learned_all(s), "the restarted trainer to learn every example")

    final = open_store(s).get("ctr")
    assert final.samples_seen == N and final.offsets == {0: N}
    # With one partition the order is fixed: the weights are those of a run without a crash.
    reference = Training(
        s.model, ManualClock(0.0), TrainingPolicy(checkpoint_every_n=10**9, checkpoint_every_s=1e9)
    )
    for offset, e in enumerate(stream()):
        reference.learn(e, 0, offset)
    assert final.model.model[-1].weights == pytest.approx(reference.learner.model[-1].weights)
    assert final.metrics == pytest.approx(reference.learner.metrics())


@pytest.mark.parametrize("split", [False, True], ids=["one-trainer", "trainer-per-subset"])
def test_champion_and_challengers_match_rivers_progressive_validation(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    """Three specs learn from one pass, each in its own lineage, and each one's metrics are
    exactly River's ``progressive_val_score`` for that spec on the same examples in order. Split
    over two trainer processes (TRAINER_MODELS: the champion on one, the challengers on the
    other, each in its consumer group), the same, and each group commits every example."""
    challengers = [
        {"name": "ctr-fm", "learner": {"kind": "fm", "n_factors": 4}},
        {"name": "ctr-adp", "encoding": "hash", "learner": {"kind": "ad_predictor"}},
    ]
    s = start(processes, monkeypatch, STREAMLEARN_CHALLENGERS=json.dumps(challengers))
    if split:
        for n, subset in enumerate((["ctr"], ["ctr-fm", "ctr-adp"])):
            processes.start(
                f"trainer-{n}",
                "-m",
                "consumers.trainer",
                STREAMLEARN_TRAINER_MODELS=json.dumps(subset),
                STREAMLEARN_TRAINER_METRICS_PORT=str(free_port()),
            )
    else:
        processes.start("trainer", "-m", "consumers.trainer")
    store = open_store(s)

    def all_learned() -> bool:
        versions = [store.latest_version(m.name) for m in s.models]
        return all(v is not None for v in versions) and all(
            store.meta(m.name, v)["samples_seen"] >= N
            for m, v in zip(s.models, versions, strict=True)
        )

    wait_until(all_learned, "every model to learn every example")
    for spec in s.models:
        got = store.get(spec.name).metrics
        dataset = [(example_features(spec, e), e.label) for e in stream()]
        auc = evaluate.progressive_val_score(dataset, spec.build(), metrics.ROCAUC())
        loss = evaluate.progressive_val_score(dataset, spec.build(), metrics.LogLoss())
        assert got["roc_auc"] == pytest.approx(auc.get(), abs=1e-12), spec.name
        assert got["log_loss"] == pytest.approx(loss.get(), abs=1e-12), spec.name
        assert math.isfinite(got["calibration"]) and got["roc_auc"] > 0.7, (spec.name, got)
    if split:
        assert "ctr-fm" not in processes.log("trainer-0")
        assert "checkpoint ctr v" not in processes.log("trainer-1")
        for group in ("trainer.ctr", "trainer.ctr-adp+ctr-fm"):
            wait_until(
                lambda g=group: sum(trainer_committed(s, g).values()) == N,  # type: ignore[misc]
                f"{group} to commit every example",
            )


def test_redis_down_at_checkpoint_time(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    """A Redis of the test's own, stopped mid-run: the trainer keeps learning, commits nothing
    past the last complete snapshot, says so in its log and metrics, and catches up when Redis
    is back."""
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_CHECKPOINT_EVERY_N="100",
        STREAMLEARN_CHECKPOINT_EVERY_S="1",
        STREAMLEARN_REDIS_URL=private_redis.url,
    )
    topic = s.topic("examples")
    half = [(topic, e.user_id.encode(), e.model_dump_json().encode()) for e in stream()]
    produce(s, half[: N // 2])
    processes.start("trainer", "-m", "consumers.trainer")
    wait_until(lambda: trainer_committed(s) == {0: N // 2}, "the first half to be committed")

    private_redis.stop()
    produce(s, half[N // 2 :])
    wait_until(
        lambda: "checkpoint of ctr incomplete" in processes.log("trainer"),
        "the trainer to say its checkpoint is incomplete",
    )
    metrics_port = processes.env["STREAMLEARN_TRAINER_METRICS_PORT"]
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    name = "streamlearn_trainer_checkpoint_failures_total "
    line = next(x for x in scrape.splitlines() if x.startswith(name))
    assert float(line.removeprefix(name)) >= 1
    assert trainer_committed(s) == {0: N // 2}  # nothing past the last complete snapshot

    private_redis.start()
    wait_until(lambda: trainer_committed(s) == {0: N}, "the trainer to catch up")
    hot = open_store(s).hot
    v = hot.latest_version("ctr")
    assert v is not None and hot.meta("ctr", v)["samples_seen"] == N


def test_retention_runs_after_every_checkpoint_per_model(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage stays bounded with nobody running a command: each model keeps what its policy
    says (a challenger its own), the champion's version whatever its age, and Redis only the
    hot copies; each with the chain of deltas it is built on (a whole snapshot every third)."""
    challenger = {"name": "ctr-fm", "learner": {"kind": "fm"}, "retention": {"keep_last": 2}}
    s = start(
        processes,
        monkeypatch,
        STREAMLEARN_CHALLENGERS=json.dumps([challenger]),
        STREAMLEARN_RETENTION_KEEP_LAST="3",
        STREAMLEARN_RETENTION_HOT_LAST="1",
        STREAMLEARN_SNAPSHOT_FULL_EVERY="3",
    )
    processes.start("trainer", "-m", "consumers.trainer")
    store = open_store(s)
    wait_until(lambda: learned_all(s), "the trainer to learn every example")
    champion = store.latest_version("ctr")
    assert champion is not None
    Registry(store).promote("ctr", champion)
    more = [e for seed in (12, 13, 14) for e in stream(seed)]  # batches of 500: 7 checkpoints
    examples = [
        e.model_copy(update={"example_id": f"more{n}:{e.example_id}"}) for n, e in enumerate(more)
    ]
    produce_examples(s, examples)
    wait_until(lambda: store.meta("ctr")["samples_seen"] >= 4 * N, "the second batch learned")

    def chained(model: str, versions: list[int]) -> set[int]:
        parents = {m["version"]: m["delta_of"] for m in store.versions(model)}
        kept = set()
        for version in versions:
            while version is not None and version not in kept:
                kept.add(version)
                version = parents.get(version)
        return kept

    def retained(model: str, newest: int) -> bool:
        latest = store.latest_version(model)
        assert latest is not None
        want = chained(model, [*range(latest - newest + 1, latest + 1)])
        if model == "ctr":
            want |= chained(model, [champion])
        return {m["version"] for m in store.versions(model)} == want

    wait_until(
        lambda: retained("ctr", 3) and retained("ctr-fm", 2), "the last checkpoints' retention"
    )

    latest = store.latest_version("ctr")
    assert latest is not None and latest > champion + 6  # it and its chain would have gone
    kept = {m["version"] for m in store.versions("ctr")}
    assert {champion, latest - 2, latest - 1, latest} <= kept
    assert len(kept) <= 4 + 2 * 2  # at most two deltas' chain below each of the two groups
    assert any(v not in kept for v in range(champion + 1, latest - 2))  # some were deleted
    hot = redis.Redis.from_url(s.redis_url).keys(f"{s.topic_prefix}snap:ctr:*")
    assert {int(k.rsplit(b":", 1)[1]) for k in hot} == chained("ctr", [champion, latest])
    assert store.get("ctr", latest - 1).version == latest - 1  # from the archive
    assert [m["version"] for m in store.versions("ctr-fm")][-1] == store.latest_version("ctr-fm")
