"""A score's explanation: each feature's contribution, largest first, summing to the model's own
logit (its probit's argument for AdPredictor), for every kind of learner and encoding."""

from __future__ import annotations

import math
import random

import pytest
from river.utils.math import norm_cdf

from streamlearn.clock import ManualClock
from streamlearn.explaining import explain
from streamlearn.learning import Learner, ModelSpec
from streamlearn.simulation import Deployed
from streamlearn.training import Training, TrainingPolicy
from tests.unit.test_serving import CROSSES, _request

SPECS = [
    ModelSpec(crosses=CROSSES),
    ModelSpec(crosses=CROSSES, encoding="hash", hash_features=64),  # collisions, named
    ModelSpec(crosses=CROSSES, scale=True),
    ModelSpec(crosses=CROSSES, learner={"kind": "fm", "n_factors": 4}),
    ModelSpec(crosses=CROSSES, learner={"kind": "ad_predictor"}),
    ModelSpec(crosses=CROSSES, position="feature"),
    ModelSpec(crosses=CROSSES, delay_correction="fnc"),
]
IDS = ["onehot", "hash", "scaled", "fm", "ad_predictor", "position", "fnc"]


def trained(spec: ModelSpec) -> Learner:
    t = Training(
        spec, ManualClock(0.0), TrainingPolicy(checkpoint_every_n=10**6, checkpoint_every_s=1e9)
    )
    for i, e in enumerate(Deployed(ManualClock(0.0)).examples(3000)):
        t.learn(e, 0, i)
    return t.learner


def _own(learner: Learner, x: dict[str, object]) -> float:
    """The model's own probability of ``x`` (no delay correction), from River."""
    encoded = learner.model[0].transform_one(x)
    return float(learner.model[-1].predict_proba_one(encoded)[True])


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_contributions_sum_to_the_models_own_logit(spec: ModelSpec) -> None:
    learner = trained(spec)
    rng = random.Random(4)
    checked = 0
    for _ in range(40):
        r = _request(rng)
        for c in r.items:
            why = explain(learner, r.context, c.item_id, c.features)
            total = why.bias + sum(v for _, v in why.contributions)
            assert total == pytest.approx(why.score, rel=1e-9, abs=1e-12)
            p = _own(learner, learner.serving_features(r.context, c.item_id, c.features))
            assert why.probability == pytest.approx(p, rel=1e-9)
            if 1e-9 < p < 1 - 1e-9:  # the link inverted: the model's own logit (or probit)
                own = math.log(p / (1 - p)) if why.link == "logit" else None
                if own is not None:
                    assert why.score == pytest.approx(own, rel=1e-6, abs=1e-9)
                else:
                    assert norm_cdf(why.score) == pytest.approx(p, rel=1e-9)
            sizes = [abs(v) for _, v in why.contributions]
            assert sizes == sorted(sizes, reverse=True)
            checked += 1
    assert checked > 100


def test_a_learned_feature_explains_and_a_hashed_bucket_is_named_by_its_features() -> None:
    learner = trained(ModelSpec(encoding="hash", hash_features=2**18))
    why = explain(learner, {"segment": "gamer", "mobile": True}, "i3", {"category": "games"})
    names = [name for name, _ in why.contributions]
    assert "c:segment_gamer" in names and "i:category_games" in names and "item_i3" in names
    assert "x:segment&category_gamer&games" in names
    assert "c:mobile" in names  # numbers keep their names


def test_fm_pairs_are_named_by_both_features() -> None:
    learner = trained(ModelSpec(learner={"kind": "fm", "n_factors": 4}))
    why = explain(learner, {"segment": "gamer"}, "i3", {"category": "games"})
    assert any(name == "c:segment_gamer * i:category_games" for name, _ in why.contributions)
