"""The trainer's corrections for delayed conversions, and honest progressive metrics."""

from __future__ import annotations

import random

import pytest

from streamlearn.clock import ManualClock
from streamlearn.delay import EsdfmWeights, fnc_served, fnw_weight
from streamlearn.events import LabeledExample
from streamlearn.features import example_features, one_hot_union
from streamlearn.learning import ModelSpec
from streamlearn.training import Training
from tests.factories import example

RATE = 0.2


def fnw_stream(n: int, seed: int = 1) -> list[LabeledExample]:
    """What the joiner emits in label mode fnw for impressions that convert at RATE: each at
    once as a fake negative, a converted one again as a delayed positive, the rest's final
    negative (weight 0) at the window's end."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = example(False).model_copy(update={"example_id": f"r{i}:i"})
        out.append(base.model_copy(update={"kind": "fake_negative"}))
        if rng.random() < RATE:
            out.append(base.model_copy(update={"label": True, "kind": "delayed_positive"}))
        else:
            out.append(base.model_copy(update={"kind": "real_negative", "weight": 0.0}))
    return out


def learned(spec: ModelSpec, stream: list[LabeledExample]) -> Training:
    t = Training(spec, ManualClock(0.0))
    for offset, e in enumerate(stream):
        t.learn(e, 0, offset)
    return t


def test_the_published_weights() -> None:
    assert fnw_weight(0.25, True) == 1.25
    assert fnw_weight(0.25, False) == pytest.approx(0.75 * 1.25)
    assert fnc_served(1 / 6) == pytest.approx(0.2)
    assert fnc_served(0.9) < 1.0


@pytest.mark.parametrize(
    ("correction", "rate"), [("none", RATE / (1 + RATE)), ("fnw", RATE), ("fnc", RATE)]
)
def test_each_correction_serves_the_rate_it_should(correction: str, rate: float) -> None:
    """Under fake negatives a plain model learns the biased rate p / (1 + p); weighting or
    calibrating brings the true one back."""
    spec = ModelSpec(
        learner={"optimizer": "sgd", "learning_rate": 0.02}, delay_correction=correction
    )
    t = learned(spec, fnw_stream(20_000))
    served = t.learner.predict_proba_one(example_features(spec, example(False)))
    assert served == pytest.approx(rate, abs=0.02)


def test_a_fake_negative_that_converts_is_scored_once_as_the_positive_it_was() -> None:
    spec = ModelSpec()
    t = Training(spec, ManualClock(0.0))
    fake = example(False).model_copy(update={"kind": "fake_negative"})
    t.learn(fake, 0, 0)
    assert (t.learner.samples_seen, t.learner.scored) == (1, 0)  # learned, not yet scored
    held = t.learner.provisional[fake.example_id]
    t.learn(fake.model_copy(update={"label": True, "kind": "delayed_positive"}), 0, 1)
    assert (t.learner.samples_seen, t.learner.scored, t.learner.positives) == (2, 1, 1)
    assert t.learner.recent[-1] == (held, True)  # the score it had when first seen
    assert t.learner.provisional == {}


def test_a_final_negative_settles_without_learning_again() -> None:
    t = Training(ModelSpec(), ManualClock(0.0))
    fake = example(False).model_copy(update={"kind": "fake_negative"})
    t.learn(fake, 0, 0)
    t.learn(fake.model_copy(update={"kind": "real_negative", "weight": 0.0}), 0, 1)
    assert (t.learner.samples_seen, t.learner.scored, t.learner.positives) == (1, 1, 0)
    assert t.offsets == {0: 2}


WINDOW_S, OBSERVE_S = 10.0, 3.0


def observed(i: int, segment: str, converts_at: float | None) -> list[LabeledExample]:
    """Impression ``i`` (one a second) as label mode observe emits it, a fake negative at
    OBSERVE_S, then a delayed positive at ``converts_at`` or the final negative at WINDOW_S."""
    base = example(False, segment).model_copy(
        update={"example_id": f"r{i}:i", "recommendation_time": float(i)}
    )
    out = [base.model_copy(update={"kind": "fake_negative", "elapsed_s": OBSERVE_S})]
    if converts_at is not None:
        update = {"label": True, "kind": "delayed_positive", "elapsed_s": converts_at}
        return [*out, base.model_copy(update=update)]
    update = {"kind": "real_negative", "weight": 0.0, "elapsed_s": WINDOW_S}
    return [*out, base.model_copy(update=update)]


def in_emission_order(impressions: list[list[LabeledExample]]) -> list[LabeledExample]:
    return sorted(
        (e for examples in impressions for e in examples),
        key=lambda e: e.recommendation_time + (e.elapsed_s or 0.0),
    )


def test_esdfm_learns_which_negatives_turn_positive() -> None:
    """Observed negatives of segment a convert later half the time, of segment b never: the
    auxiliary models learn it, and weigh a's negatives less than b's."""
    spec = ModelSpec(delay_correction="esdfm")
    impressions = [
        observed(i, "a" if i % 2 else "b", 6.0 if i % 4 == 1 else None) for i in range(3000)
    ]
    t = learned(spec, in_emission_order(impressions))
    weights = t.learner.esdfm
    assert weights is not None
    x_a = {"c:segment_a": 1, "i:category_b": 1, "item_i": 1}
    x_b = {"c:segment_b": 1, "i:category_b": 1, "item_i": 1}
    assert weights.weight(x_a, False) < weights.weight(x_b, False)
    assert weights.weight(x_a, True) > weights.weight(x_b, True)


def test_esdfm_learns_each_fate_when_its_window_closes() -> None:
    """The delayed positives come before the real negatives of the same impressions' time:
    learned as they come, the auxiliary models would see a biased order. They learn each fate
    when its window closes instead, so exactly as from every impression's fate given in order
    of its window's end; and until the first window closes they weigh every example 1."""
    rng = random.Random(5)
    impressions = [
        observed(i, "a", rng.uniform(OBSERVE_S, WINDOW_S) if rng.random() < 0.3 else None)
        for i in range(2000)
    ]
    t = Training(ModelSpec(delay_correction="esdfm"), ManualClock(0.0))
    weights = t.learner.esdfm
    assert weights is not None
    x = {"c:segment_a": 1, "i:category_b": 1, "item_i": 1}
    stream = in_emission_order(impressions)
    for offset, e in enumerate(stream):
        t.learn(e, 0, offset)
        if e.recommendation_time + (e.elapsed_s or 0.0) < WINDOW_S:
            assert (weights.weight(x, False), weights.weight(x, True)) == (1.0, 1.0)
    # Every fate whose window has closed (by the last final label's time), in the order the
    # windows closed, to two plain models; the later ones still held.
    now = max(
        e.recommendation_time + (e.elapsed_s or 0.0) for e in stream if e.kind != "fake_negative"
    )
    reference, later = EsdfmWeights(), set()
    for examples in impressions:
        final = examples[-1]
        if final.recommendation_time + WINDOW_S <= now:
            reference._learn(one_hot_union(example_features(t.spec, final)), final.label, True)
        else:
            later.add(final.recommendation_time)
    assert {h[0] for h in weights.held} == later
    assert weights.delayed._weights == reference.delayed._weights
    assert weights.real_negative._weights == reference.real_negative._weights


def test_served_time_figures_use_the_score_this_model_served() -> None:
    """The champion's served-time AUC is that of the scores the API logged (here a perfect
    ranking); a challenger, which served none of them, is judged by its own first scores, the
    same as its progressive figures."""
    rng = random.Random(3)
    stream = []
    for i in range(2000):
        label = rng.random() < 0.3
        stream.append(
            example(label, "a").model_copy(
                update={
                    "example_id": f"r{i}:i",
                    "kind": "immediate" if label else "real_negative",
                    "model_version": "ctr:v4",
                    "served_score": 0.9 if label else 0.1,
                }
            )
        )
    champion = learned(ModelSpec(), stream).learner.metrics()
    assert champion["served_roc_auc"] > 0.99 > champion["roc_auc"]
    assert champion["served_logged_share"] == 1.0
    challenger = learned(ModelSpec(name="fm"), stream).learner.metrics()
    assert challenger["served_logged_share"] == 0.0
    assert challenger["served_roc_auc"] == challenger["roc_auc"]
    assert list(champion)[:2] == ["served_roc_auc", "served_log_loss"]  # shown first
