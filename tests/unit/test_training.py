from __future__ import annotations

import pytest

from streamlearn.clock import ManualClock
from streamlearn.features import example_features, one_hot_union
from streamlearn.learning import ModelSpec
from streamlearn.training import Training, TrainingPolicy
from tests.factories import example

EVERY_100 = TrainingPolicy(checkpoint_every_n=100, checkpoint_every_s=60.0)


def test_checkpoint_is_due_by_count_or_time_and_resets() -> None:
    clock = ManualClock(0.0)
    t = Training(ModelSpec(), clock, TrainingPolicy(checkpoint_every_n=3, checkpoint_every_s=10.0))
    assert not t.checkpoint_due()  # nothing learned: nothing to save
    t.learn(example(True), 0, 0)
    assert not t.checkpoint_due()
    clock.advance(10.0)
    assert t.checkpoint_due()
    t.checkpointed(1)
    for offset in (1, 2, 3):
        t.learn(example(False), 0, offset)
    assert t.checkpoint_due()


def test_snapshot_states_the_resume_point_and_lineage() -> None:
    clock = ManualClock(100.0)
    t = Training(ModelSpec(), clock, EVERY_100)
    t.learn(example(True), 0, 10)
    t.learn(example(False), 2, 4)
    first = t.snapshot(1)
    assert first.offsets == {0: 11, 2: 5} and first.samples_seen == 2
    assert first.parent_version is None and first.created_at == 100.0
    t.checkpointed(1)
    resumed = Training(ModelSpec(), clock, EVERY_100, snapshot=first)
    resumed.learn(example(True), 0, 11)
    second = resumed.snapshot(2)
    assert second.parent_version == 1 and second.samples_seen == 3 and second.offsets[0] == 12


def test_progressive_validation_scores_before_learning() -> None:
    t = Training(ModelSpec(), ManualClock(0.0), EVERY_100)
    for n in range(200):
        t.learn(example(True, "a"), 0, 2 * n)
        t.learn(example(False, "z"), 0, 2 * n + 1)
    m = t.learner.metrics()
    assert m["roc_auc"] > 0.9 and m["positive_rate"] == 0.5
    assert 0.9 < m["calibration"] < 1.1


def test_corrections_are_skipped_and_weights_are_used() -> None:
    t = Training(ModelSpec(), ManualClock(0.0), EVERY_100)
    late = example(True).model_copy(update={"correction": True})
    t.learn(late, 0, 7)
    assert t.samples_seen == 0 and t.offsets == {0: 8}
    light, heavy = (Training(ModelSpec(), ManualClock(0.0), EVERY_100) for _ in range(2))
    light.learn(example(True), 0, 0)
    heavy.learn(example(True).model_copy(update={"weight": 5.0}), 0, 0)
    x = example_features(ModelSpec(), example(True))
    assert heavy.learner.predict_proba_one(x) > light.learner.predict_proba_one(x)


def test_correction_policy_learn_weights_the_late_positive() -> None:
    t = Training(
        ModelSpec(),
        ManualClock(0.0),
        TrainingPolicy(
            checkpoint_every_n=100,
            checkpoint_every_s=60.0,
            correction_policy="learn",
            correction_weight=0.5,
        ),
    )
    t.learn(example(True).model_copy(update={"correction": True}), 0, 7)
    assert t.samples_seen == 1 and t.learner.positives == 1


def test_a_model_skips_what_its_snapshot_has_learned() -> None:
    """Several models share one pass; each resumes from its own offsets."""
    ahead = Training(ModelSpec(), ManualClock(0.0), EVERY_100)
    for n in range(5):
        ahead.learn(example(n % 2 == 0), 0, n)
    restored = Training(ModelSpec(), ManualClock(0.0), EVERY_100, snapshot=ahead.snapshot(1))
    for n in range(8):  # the shared pass re-reads from an earlier offset
        restored.learn(example(n % 2 == 0), 0, n)
    assert restored.samples_seen == 8 and restored.offsets == {0: 8}


@pytest.mark.parametrize(
    "learner", [{"kind": "logistic_regression"}, {"kind": "ad_predictor"}, {"kind": "fm"}]
)
@pytest.mark.parametrize("encoding,scale", [("onehot", False), ("hash", True)])
def test_every_learner_and_encoding_learns_who_likes_what(
    learner: dict[str, str], encoding: str, scale: bool
) -> None:
    spec = ModelSpec.model_validate({"learner": learner, "encoding": encoding, "scale": scale})
    t = Training(
        spec, ManualClock(0.0), TrainingPolicy(checkpoint_every_n=1000, checkpoint_every_s=60.0)
    )
    for n in range(300):
        t.learn(example(True, "likes"), 0, 2 * n)
        t.learn(example(False, "dislikes"), 0, 2 * n + 1)
    likes = t.learner.predict_proba_one(example_features(spec, example(True, "likes")))
    dislikes = t.learner.predict_proba_one(example_features(spec, example(True, "dislikes")))
    assert likes > 0.6 > 0.4 > dislikes, (likes, dislikes)


def test_a_learner_from_an_older_snapshot_keeps_its_log_loss() -> None:
    """Snapshots written before the trainer kept its own running log loss pickled River's
    ``LogLoss``: read back, the figure is the same and goes on counting."""
    import pickle

    from river import metrics

    t = Training(ModelSpec(), ManualClock(0.0))
    for offset in range(40):
        t.learn(example(offset % 3 == 0), 0, offset)
    old = metrics.LogLoss()
    for offset in range(40):
        old.update(offset % 2 == 0, {True: 0.3, False: 0.7})
    t.learner.log_loss = old
    restored = pickle.loads(pickle.dumps(t.learner))
    assert restored.metrics()["log_loss"] == pytest.approx(old.get())
    restored.record(True, 0.3)
    old.update(True, {True: 0.3, False: 0.7})
    assert restored.metrics()["log_loss"] == pytest.approx(old.get())


def test_position_as_a_feature_learns_one_bias_per_slot_and_ranks_as_the_top_slot() -> None:
    """Clicks fall with the slot shown in, whatever the item: a position-aware model learns a
    bias per slot (the lower, the less) and scores every candidate as if shown on top, so its
    ranking score is the same whichever slot an item was logged in; a blind model's is not."""
    import random

    aware = Training(ModelSpec(position="feature"), ManualClock(0.0))
    rng = random.Random(0)
    for offset in range(6000):
        slot = offset % 4
        e = example(rng.random() < 0.4 - 0.1 * slot, "likes").model_copy(update={"position": slot})
        aware.learn(e, 0, offset)
    weights = aware.learner.model[-1].weights
    bias = [weights.get(f"pos_{slot}", 0.0) for slot in range(4)]
    assert bias == sorted(bias, reverse=True), bias  # lower slots, lower bias
    e = example(True, "likes")
    x = aware.learner.serving_features(e.context, e.item_id, e.item_features)
    assert x["pos"] == "0"
    shown_low = e.model_copy(update={"position": 3})
    assert example_features(aware.spec, shown_low)["pos"] == "3"  # learned where it was shown


def test_ips_weighs_each_example_by_its_inverse_propensity_clipped() -> None:
    from river import linear_model, optim

    t = Training(ModelSpec(position="ips", ips_clip=5.0), ManualClock(0.0))
    plain = linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.1))
    for offset, (label, propensity) in enumerate([(True, 0.5), (False, 0.1), (True, 0.9)]):
        e = example(label, "likes").model_copy(update={"propensity": propensity})
        t.learn(e, 0, offset)
        x = one_hot_union(example_features(t.spec, e))
        plain.learn_one(x, label, w=min(1 / propensity, 5.0))
    assert t.learner.model[-1].weights == plain.weights
