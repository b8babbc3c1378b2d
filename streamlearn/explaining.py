"""Why a model scored a candidate as it did: each feature's contribution to its score.

Every learner streamlearn configures scores a sum passed through a link, so the sum's terms are
an exact explanation (no sampling, no surrogate model):

* logistic regression: ``logit = intercept + sum(weight * value)``, one term per encoded feature;
* factorization machine: the same linear terms, and one term per pair of features that are both
  present, ``<latent_a, latent_b> * value_a * value_b``, named ``a * b``;
* AdPredictor: ``probit = (bias mean + sum(mean of each active feature)) / sqrt(total
  variance)``, so a feature's term is its weight's mean over the prediction's spread.

The terms are over the features as the model sees them after its encoding: ``c:segment_gamer``
(a context category), ``i:price`` (an item number, scaled when the spec scales), ``item_i7``, a
cross ``x:segment&category_gamer&fashion``; a hashed model's buckets are named by the features
that hash to them. They sum to ``score``, the link's argument (``link``); ``probability`` is the
model's own, before any delay correction (``delay_correction: fnc`` serves a corrected one).

>>> from streamlearn.learning import Learner, ModelSpec
>>> learner = Learner(ModelSpec())
>>> for price, bought in [(1.0, True), (9.0, False)] * 50:
...     _ = learner.learn_one(learner.serving_features({}, "i1", {"price": price}), bought)
>>> why = explain(learner, {}, "i1", {"price": 1.0})
>>> [name for name, _ in why.contributions]
['item_i1', 'i:price']
>>> round(why.bias + sum(c for _, c in why.contributions) - why.score, 12)
0.0
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from river import facto, linear_model
from river.utils.math import sigmoid

from streamlearn.errors import ConfigError
from streamlearn.learning import Learner

_ADPREDICTOR_BIAS = "__bias__"  # River's key for AdPredictor's always-active weight


@dataclass(frozen=True)
class Explanation:
    link: Literal["logit", "probit"]
    score: float  # the link's argument: bias + the contributions
    bias: float
    contributions: list[tuple[str, float]]  # largest magnitude first
    probability: float  # the link of the score, as the model predicts it

    def as_dict(self) -> dict[str, Any]:
        """For JSON: without the probability, which the response gives beside it."""
        return {
            "link": self.link,
            "score": self.score,
            "bias": self.bias,
            "contributions": [
                {"feature": name, "contribution": c} for name, c in self.contributions
            ],
        }


def explain(
    learner: Learner,
    context: Mapping[str, float | bool | str],
    item_id: str,
    item: Mapping[str, float | bool | str],
) -> Explanation:
    """Each encoded feature's contribution to ``learner``'s score of one candidate, as it is
    scored for ranking (:meth:`Learner.serving_features`)."""
    raw = learner.serving_features(context, item_id, item)
    encoder, final = learner.model[0], learner.model[-1]
    x = encoder.transform_one(raw)
    names = _names(encoder, raw, x) if learner.spec.encoding == "hash" else {}
    if isinstance(final, linear_model.LogisticRegression):
        w = final._weights
        bias = float(final.intercept)
        terms = {k: float(w.get(k, 0.0)) * float(v) for k, v in x.items()}
        score = bias + sum(terms.values())
        return _explained("logit", score, bias, terms, names, float(final.loss.mean_func(score)))
    if isinstance(final, facto.FMClassifier):
        fm: Any = final  # River's FM is untyped
        x = fm._ohe_cat_features(x)
        bias = float(final.intercept)
        terms = {k: float(final.weights.get(k, 0.0)) * float(v) for k, v in x.items()}
        for a, b in itertools.combinations(x, 2):
            pair = float(fm._interaction_coefficient((a, b))) * float(x[a]) * float(x[b])
            terms[f"{names.get(a, a)} * {names.get(b, b)}"] = pair
        score = bias + sum(terms.values())
        return _explained("logit", score, bias, terms, names, float(sigmoid(score)))
    if isinstance(final, linear_model.AdPredictor):
        ad: Any = final  # untyped in River
        p = float(ad.predict_proba_one(x)[True])  # sets the bias's prior when it has none
        active = [k for k, v in x.items() if v]
        variance = final.variances[_ADPREDICTOR_BIAS] + final.beta**2
        variance += sum(final.variances.get(k, 1.0) for k in active)
        spread = math.sqrt(variance)
        bias = final.means[_ADPREDICTOR_BIAS] / spread
        terms = {k: final.means.get(k, 0.0) / spread for k in active}
        return _explained("probit", bias + sum(terms.values()), bias, terms, names, p)
    raise ConfigError(f"no explanation for a {type(final).__name__}")


def _explained(
    link: Literal["logit", "probit"],
    score: float,
    bias: float,
    terms: dict[Any, float],
    names: dict[Any, str],
    probability: float,
) -> Explanation:
    named = [(names.get(k, str(k)), c) for k, c in terms.items()]
    named.sort(key=lambda t: -abs(t[1]))
    return Explanation(link, score, bias, named, probability)


def _names(encoder: Any, raw: dict[str, Any], x: dict[Any, Any]) -> dict[Any, str]:
    """A hashed model's buckets named by the raw features that land in them (``a | b`` when
    two collide), in the one-hot encoding's style, ``name_value``."""
    names: dict[Any, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            for bucket in encoder.transform_one({name: value}):
                names.setdefault(bucket, []).append(f"{name}_{value}")
    return {k: " | ".join(v) for k, v in names.items() if k in x}


@dataclass(frozen=True)
class Weights:
    """A model's own weights, one per encoded feature, and its bias (what every score starts
    from): logistic regression's weights and intercept, a factorization machine's linear
    weights and intercept (its latent vectors weigh pairs, not one feature: not here),
    AdPredictor's weight means and its bias's mean. A hashed model's buckets are named
    ``#<bucket>``: which features land in one is known only for a given request."""

    bias: float
    by_feature: dict[str, float]

    def largest(self, top: int) -> list[tuple[str, float]]:
        """The ``top`` weights of largest magnitude, largest first (ties by name)."""
        ranked = sorted(self.by_feature.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return ranked[:top]


def weights(learner: Learner) -> Weights:
    """``learner``'s weights (see :class:`Weights`).

    >>> from streamlearn.learning import Learner, ModelSpec
    >>> learner = Learner(ModelSpec())
    >>> for price, bought in [(1.0, True), (9.0, False)] * 50:
    ...     _ = learner.learn_one(learner.serving_features({}, "i1", {"price": price}), bought)
    >>> sorted(weights(learner).by_feature)
    ['i:price', 'item_i1']
    """
    final = learner.model[-1]
    hashed = learner.spec.encoding == "hash"

    def named(table: Any) -> dict[str, float]:  # a dict, or River's VectorDict
        return {
            (f"#{k}" if hashed and isinstance(k, int) else str(k)): float(v)
            for k, v in table.items()
            if k != _ADPREDICTOR_BIAS
        }

    if isinstance(final, linear_model.LogisticRegression):
        return Weights(float(final.intercept), named(final._weights))
    if isinstance(final, facto.FMClassifier):
        return Weights(float(final.intercept), named(final.weights))
    if isinstance(final, linear_model.AdPredictor):
        return Weights(float(final.means.get(_ADPREDICTOR_BIAS, 0.0)), named(final.means))
    raise ConfigError(f"no weights for a {type(final).__name__}")


def moved(before: Weights, after: Weights, top: int) -> list[tuple[str, float, float]]:
    """The ``top`` features whose weight changed most from ``before`` to ``after`` (a weight a
    model does not have is 0), largest change first: ``(feature, before, after)``.

    >>> moved(Weights(0.0, {"a": 1.0, "b": 2.0}), Weights(0.0, {"a": 1.5, "c": -1.0}), 2)
    [('b', 2.0, 0.0), ('c', 0.0, -1.0)]
    """
    names = before.by_feature.keys() | after.by_feature.keys()
    pairs = [(n, before.by_feature.get(n, 0.0), after.by_feature.get(n, 0.0)) for n in names]
    pairs.sort(key=lambda p: (-abs(p[2] - p[1]), p[0]))
    return pairs[:top]
