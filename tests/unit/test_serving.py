"""Scoring a request's candidates together gives each the score it gets alone: to the bit, or
within 1e-15 for a served logistic regression's frozen scorer, which sums in another order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streamlearn.clock import ManualClock
from streamlearn.features import impression_features, one_hot_candidates, one_hot_union
from streamlearn.learning import Learner, ModelSpec
from streamlearn.serving import Candidate, ScoreRequest, Served
from streamlearn.training import Training, TrainingPolicy
from tests.factories import example


def _value(rng: random.Random) -> float | bool | str:
    return rng.choice([rng.uniform(-3, 3), rng.random() < 0.5, rng.choice("abcde")])


def _request(rng: random.Random) -> ScoreRequest:
    names = ["segment", "category", "price", "mobile", "age", "brand"]
    context = {n: _value(rng) for n in rng.sample(names, rng.randrange(0, 4))}
    items = [
        Candidate(
            item_id=f"i{n}", features={k: _value(rng) for k in rng.sample(names, rng.randrange(4))}
        )
        for n in range(rng.randrange(1, 30))
    ]
    return ScoreRequest(user_id="u", context=context, items=items)


CROSSES = (("segment", "category"), ("price", "age"), ("mobile", "brand"))


def test_the_fused_encoding_is_the_pipelines_in_the_same_order() -> None:
    rng = random.Random(1)
    for _ in range(200):
        r = _request(rng)
        candidates = [(c.item_id, c.features) for c in r.items]
        position = rng.choice([None, 0, 3])  # a position-aware model's slot feature
        fused = list(one_hot_candidates(r.context, candidates, CROSSES, True, position))
        for (item_id, item), got in zip(candidates, fused, strict=True):
            x = impression_features(
                r.context, item, item_id=item_id, crosses=CROSSES, position=position
            )
            assert list(got.items()) == list(one_hot_union(x).items())


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(crosses=CROSSES),
        ModelSpec(crosses=CROSSES, encoding="hash"),
        ModelSpec(crosses=CROSSES, scale=True),
        ModelSpec(crosses=CROSSES, learner={"kind": "fm", "n_factors": 4}),
        ModelSpec(crosses=CROSSES, position="feature"),
        ModelSpec(crosses=CROSSES, position="feature", encoding="hash"),
    ],
    ids=["onehot", "hash", "scaled", "fm", "position", "position-hash"],
)
def test_a_request_scores_as_its_candidates_one_by_one(spec: ModelSpec) -> None:
    t = Training(
        spec, ManualClock(0.0), TrainingPolicy(checkpoint_every_n=10**6, checkpoint_every_s=1e9)
    )
    for i in range(200):
        t.learn(example(i % 3 == 0, random.Random(i).choice(["likes", "dislikes"])), 0, i)
    served = Served("ctr", 1, t.learner)
    rng = random.Random(2)
    for _ in range(50):
        r = _request(rng)
        alone: list[Any] = [served.score(r.context, c.item_id, c.features) for c in r.items]
        assert served.score_request(r) == pytest.approx(alone, rel=0, abs=1e-15)


def test_a_frozen_scorer_keeps_each_items_part_and_scores_as_the_learner() -> None:
    rng = random.Random(3)
    learner = Learner(ModelSpec(crosses=CROSSES))
    for _ in range(300):  # weights for numbers, one-hots and crosses of every kind of value
        r = _request(rng)
        for c in r.items:
            learner.learn_one(
                learner.serving_features(r.context, c.item_id, c.features), rng.random() < 0.3
            )
    # True and 1.0, 0.0 and -0.0 are equal, but crossed with a string they are other features.
    flag = {"brand": "a"}
    forms: list[float | bool] = [True, 1.0, 0.0, -0.0]
    for value, label in zip(forms * 50, [True, False, False, True] * 50, strict=True):
        learner.learn_one(learner.serving_features(flag, "i1", {"mobile": value}), label)
    frozen = learner.frozen_scorer()
    assert frozen != learner.score_candidates  # the logistic regression's own
    requests = [_request(rng) for _ in range(100)]
    for r in requests * 2:  # the second time, every item's part from the cache
        candidates = [(c.item_id, c.features) for c in r.items]
        expected = learner.score_candidates(r.context, candidates)
        assert frozen(r.context, candidates) == pytest.approx(expected, rel=0, abs=1e-15)
    scores = []
    for value in forms * 2:
        candidates = [("i1", {"mobile": value})]
        scores.append(frozen(flag, candidates))
        expected = learner.score_candidates(flag, candidates)
        assert scores[-1] == pytest.approx(expected, rel=0, abs=1e-15)
    assert len({round(s[0], 9) for s in scores}) == 4  # each form its own score, cached or not
