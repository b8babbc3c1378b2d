"""Deterministic replay: a snapshot rebuilt from its parent and the examples between them is the
same model, bit for bit; one learned otherwise is not."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import pytest

from streamlearn.archive_query import connect
from streamlearn.backfill import backfill
from streamlearn.clock import ManualClock
from streamlearn.errors import ReplayError
from streamlearn.features import example_features
from streamlearn.fingerprint import fingerprint
from streamlearn.learning import Learner, ModelSpec
from streamlearn.simulation import Storefront
from streamlearn.snapshots.base import Snapshot
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.training import Training, TrainingPolicy
from streamlearn.verification import archived, span, verify
from tests.factories import DAY, T0, archive_of_examples

KEY = b"k" * 32


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(),
        ModelSpec(learner={"kind": "fm", "n_factors": 4}),
        ModelSpec(learner={"kind": "ad_predictor"}),
        ModelSpec(encoding="hash", hash_features=1024, scale=True),
    ],
    ids=["logistic", "fm", "ad_predictor", "hashed-scaled"],
)
def test_the_fingerprint_is_the_weights_not_the_pickle(spec: ModelSpec) -> None:
    """A model restored from its pickle and learned on equals the one that never stopped, though
    their pickles differ; one more example, and it differs."""
    made = Storefront(traffic_seed=2).labeled_examples(600)
    live = Learner(spec)
    for e in made[:400]:
        live.learn_one(example_features(spec, e), e.label)
    restored = pickle.loads(pickle.dumps(live))
    for e in made[400:]:
        live.learn_one(example_features(spec, e), e.label)
        restored.learn_one(example_features(spec, e), e.label)
    assert fingerprint(restored) == fingerprint(live)
    restored.learn_one(example_features(spec, made[0]), made[0].label)
    assert fingerprint(restored) != fingerprint(live)


def lineage(tmp_path: Path) -> list[Snapshot]:
    """A backfill's lineage, v1..v3, over an archive of two partitions whose examples it learned
    interleaved by time; each version through the store (signed, written, read back)."""
    archive_of_examples(tmp_path / "root")
    store = ObjectSnapshotStore(f"file://{tmp_path / 'snapshots'}", KEY, notices_poll_s=None)
    con = connect(f"file://{tmp_path / 'root'}")
    day = dt.date(2025, 11, 29)
    policy = TrainingPolicy(correction_policy="learn", correction_weight=2.0)
    backfill(con, ModelSpec(name="m"), store, policy, ManualClock(T0 + DAY), day, day, every=100)
    return [store.get("m", v) for v in (1, 2, 3)]


def test_every_version_of_a_lineage_replays_identically_from_the_archive(tmp_path: Path) -> None:
    versions = lineage(tmp_path)
    con = connect(f"file://{tmp_path / 'root'}")
    parents = [None, *versions[:-1]]
    for parent, child in zip(parents, versions, strict=True):
        examples = archived(con, *span(parent, child))
        assert examples is not None
        verdict = verify(parent, child, examples, "archive")
        assert verdict.identical, (child.version, verdict)
        assert verdict.examples == child.samples_seen - (parent.samples_seen if parent else 0)
        assert len(child.order) > 1  # two partitions, interleaved: the order matters
    assert parents[1] is not None and parents[1].samples_seen == 100  # left as it was


def test_a_replay_in_another_order_or_missing_an_example_differs(tmp_path: Path) -> None:
    versions = lineage(tmp_path)
    con = connect(f"file://{tmp_path / 'root'}")
    parent, child = versions[0], versions[1]
    examples = archived(con, *span(parent, child))
    assert examples is not None
    partitions_in_turn = Snapshot(**{**vars(child), "order": sorted(child.order)})
    assert not verify(parent, partitions_in_turn, examples, "archive").identical
    assert not verify(parent, child, examples[:-1], "archive").identical
    # A trainer's other correction policy learns other weights: the snapshot records its own.
    assert child.extra["training"] == {"correction_policy": "learn", "correction_weight": 2.0}


def test_an_archive_that_does_not_hold_the_span_says_so(tmp_path: Path) -> None:
    versions = lineage(tmp_path)
    con = connect(f"file://{tmp_path / 'root'}")
    starts, ends = span(versions[1], versions[2])
    assert archived(con, starts, {p: o + 500 for p, o in ends.items()}) is None


def test_a_snapshot_without_its_order_replays_only_from_one_partition() -> None:
    spec = ModelSpec()
    made = Storefront(traffic_seed=4).labeled_examples(60)
    training = Training(spec, ManualClock(0.0))
    for offset, e in enumerate(made):
        training.learn(e, offset % 2, offset // 2)
    old = Snapshot(**{**vars(training.snapshot(1)), "order": []})
    with pytest.raises(ReplayError, match="no learning order"):
        verify(None, old, [], "archive")
