from __future__ import annotations

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample
from streamlearn.learning import ModelSpec
from streamlearn.training import Training


def example(label: bool, segment: str = "a") -> LabeledExample:
    return LabeledExample(
        example_id="r:i",
        recommendation_id="r",
        user_id="u",
        item_id="i",
        position=0,
        propensity=1.0,
        served_score=None,
        model_version=None,
        context={"segment": segment},
        item_features={"category": "b"},
        label=label,
        recommendation_time=0.0,
    )


def test_checkpoint_is_due_by_count_or_time_and_resets() -> None:
    clock = ManualClock(0.0)
    t = Training(ModelSpec(), clock, every_n=3, every_s=10.0)
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
    t = Training(ModelSpec(), clock, every_n=100, every_s=60.0)
    t.learn(example(True), 0, 10)
    t.learn(example(False), 2, 4)
    first = t.snapshot(1)
    assert first.offsets == {0: 11, 2: 5} and first.samples_seen == 2
    assert first.parent_version is None and first.created_at == 100.0
    t.checkpointed(1)
    resumed = Training(ModelSpec(), clock, every_n=100, every_s=60.0, snapshot=first)
    resumed.learn(example(True), 0, 11)
    second = resumed.snapshot(2)
    assert second.parent_version == 1 and second.samples_seen == 3 and second.offsets[0] == 12


def test_progressive_validation_scores_before_learning() -> None:
    t = Training(ModelSpec(), ManualClock(0.0), every_n=100, every_s=60.0)
    for _ in range(200):
        t.learn(example(True, "a"), 0, 0)
        t.learn(example(False, "z"), 0, 0)
    m = t.learner.metrics()
    assert m["roc_auc"] > 0.9 and m["positive_rate"] == 0.5


def test_corrections_are_skipped_and_weights_are_used() -> None:
    t = Training(ModelSpec(), ManualClock(0.0), every_n=100, every_s=60.0)
    late = example(True).model_copy(update={"correction": True})
    t.learn(late, 0, 7)
    assert t.samples_seen == 0 and t.offsets == {0: 8}
    light, heavy = (
        Training(ModelSpec(), ManualClock(0.0), every_n=100, every_s=60.0) for _ in range(2)
    )
    light.learn(example(True), 0, 0)
    heavy.learn(example(True).model_copy(update={"weight": 5.0}), 0, 0)
    x = {"c:segment=a": 1.0, "i:category=b": 1.0, "item=i": 1.0}
    assert heavy.learner.predict_proba_one(x) > light.learner.predict_proba_one(x)
