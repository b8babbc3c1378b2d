"""Model specs from configuration, and the learner that validates progressively.

A :class:`ModelSpec` names a River pipeline and its hyperparameters; data scientists change the
model by changing configuration, never code. Features arrive as numbers and strings (see
:mod:`streamlearn.features`); the pipeline one-hot encodes or hashes the strings, optionally
scales the numbers, and feeds a logistic regression, an AdPredictor or a factorization machine.

A :class:`Learner` scores every example before it learns from it (progressive validation), so
its metrics are honest out-of-sample figures: the same as River's
``evaluate.progressive_val_score`` on the same examples in the same order.

>>> learner = Learner(ModelSpec(learner={"kind": "logistic_regression", "learning_rate": 0.5}))
>>> for _ in range(50):
...     _ = learner.learn_one({"x": 1.0, "shop": "a"}, True)
...     _ = learner.learn_one({"x": -1.0, "shop": "b"}, False)
>>> learner.predict_proba_one({"x": 1.0, "shop": "a"}) > 0.9
True
>>> learner.samples_seen, round(learner.metrics()["calibration"], 1)
(100, 1.0)

A bad spec fails at start-up, naming the field and why:

>>> from pydantic import ValidationError
>>> try:
...     ModelSpec(learner={"kind": "fm", "n_factors": 0})
... except ValidationError as exc:
...     print(exc.errors()[0]["loc"], exc.errors()[0]["msg"])
('learner', 'fm', 'n_factors') Input should be greater than or equal to 1
"""

from __future__ import annotations

import bisect
import inspect
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from river import compose, facto, linear_model, metrics, optim, preprocessing

from streamlearn.features import cross, impression_features


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogisticRegressionSpec(_Strict):
    kind: Literal["logistic_regression"] = "logistic_regression"
    optimizer: Literal["adagrad", "sgd"] = Field(
        "adagrad",
        description="adagrad: per-feature learning rates, as CTR models use. Plain SGD lets a "
        "dense numeric feature swing with every burst of one label, and the join emits such "
        "bursts (positives at once, negatives when their window closes).",
    )
    learning_rate: float = Field(0.1, gt=0, le=10)
    l2: float = Field(0.0, ge=0)

    def build(self) -> Any:
        opt = optim.AdaGrad if self.optimizer == "adagrad" else optim.SGD
        return linear_model.LogisticRegression(optimizer=opt(self.learning_rate), l2=self.l2)


class AdPredictorSpec(_Strict):
    """Microsoft's Bayesian CTR model (Graepel et al. 2010), for binary (one-hot) features."""

    kind: Literal["ad_predictor"]
    beta: float = Field(0.1, gt=0, description="Scale of the probit link.")
    prior_probability: float = Field(0.5, gt=0, lt=1, description="Prior click probability.")
    epsilon: float = Field(0.05, ge=0, le=1, description="Dynamics: how fast beliefs forget.")

    def build(self) -> Any:
        return linear_model.AdPredictor(
            beta=self.beta, prior_probability=self.prior_probability, epsilon=self.epsilon
        )


class FactorizationMachineSpec(_Strict):
    """A factorization machine: learns pairwise interactions (user segment x item) itself."""

    kind: Literal["fm"]
    n_factors: int = Field(8, ge=1, le=256)
    learning_rate: float = Field(0.05, gt=0, le=10)
    l2_weight: float = Field(0.0, ge=0)
    l2_latent: float = Field(0.0, ge=0)
    seed: int = 0

    def build(self) -> Any:
        return facto.FMClassifier(
            n_factors=self.n_factors,
            weight_optimizer=optim.AdaGrad(self.learning_rate),
            latent_optimizer=optim.AdaGrad(self.learning_rate),
            l2_weight=self.l2_weight,
            l2_latent=self.l2_latent,
            seed=self.seed,
        )


LearnerSpec = Annotated[
    LogisticRegressionSpec | AdPredictorSpec | FactorizationMachineSpec,
    Field(discriminator="kind"),
]


class ModelSpec(_Strict):
    """A River pipeline and its hyperparameters, validated at start-up."""

    name: str = Field("ctr", pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    encoding: Literal["onehot", "hash"] = Field(
        "onehot",
        description="onehot: one weight per category seen (River's OneHotEncoder with "
        "drop_zeros, so high-cardinality ids stay sparse); hash: a fixed number of weights.",
    )
    hash_features: int = Field(2**18, ge=16, le=2**26)
    scale: bool = Field(False, description="Standardize numeric features (never the one-hot).")
    learner: LearnerSpec = LogisticRegressionSpec()
    crosses: tuple[tuple[str, str], ...] = (("segment", "category"),)
    include_ids: bool = True
    rolling_window: int = Field(2000, ge=10, description="Examples in the rolling metrics.")

    @field_validator("learner", mode="before")
    @classmethod
    def _kind_defaults(cls, value: Any) -> Any:
        # STREAMLEARN_MODEL__LEARNER__LEARNING_RATE alone names no kind: the default's.
        if isinstance(value, dict) and "kind" not in value:
            return {"kind": "logistic_regression", **value}
        return value

    def build(self) -> Any:
        categorical = compose.SelectType(str) | (
            preprocessing.FeatureHasher(n_features=self.hash_features, seed=0)
            if self.encoding == "hash"
            else preprocessing.OneHotEncoder(drop_zeros=True)
        )
        numeric: Any = compose.SelectType(numbers.Number)
        if self.scale:
            numeric |= preprocessing.StandardScaler()
        return compose.Pipeline(
            compose.TransformerUnion(categorical, numeric), self.learner.build()
        )


_SHORTCUTS = frozenset({"_final", "_weight_kw", "_encode"})


class Learner:
    """One model spec learning from a stream, with progressive-validation metrics."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec.build()
        self.samples_seen = 0
        self.positives = 0
        self.predicted = 0.0
        # River's metrics are untyped: Any keeps mypy's strictness for our own code.
        self.auc = ThresholdAUC()
        self.log_loss: Any = metrics.LogLoss()
        # The last scores and labels; their exact AUC is computed when asked for (at each
        # checkpoint), not updated per example as a rolling River metric would be.
        self.recent: deque[tuple[float, bool]] = deque(maxlen=spec.rolling_window)
        self._shortcuts()

    def _shortcuts(self) -> None:
        """What ``learn_one`` would otherwise work out on every example. Not pickled: rebuilt
        from the model and spec when a snapshot is loaded."""
        self._final = self.model[-1]
        # How the final step takes a sample weight: River's learners disagree on the name, and
        # AdPredictor takes none (weighted examples then count once).
        params = inspect.signature(self._final.learn_one).parameters
        self._weight_kw = next((k for k in ("w", "sample_weight") if k in params), None)
        # Without scaling every step before the learner is stateless (one-hot with drop_zeros
        # learns nothing, hashing and selection are pure), so the features can be transformed
        # once for both the prediction and the update, exactly as the pipeline would.
        self._encode: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        if not self.spec.scale:
            onehot = self.spec.encoding == "onehot"
            self._encode = one_hot_union if onehot else self.model[0].transform_one

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _SHORTCUTS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shortcuts()

    def score_candidates(
        self,
        context: Mapping[str, float | bool | str],
        candidates: Sequence[tuple[str, Mapping[str, float | bool | str]]],
    ) -> list[float]:
        """The score of each candidate of one request, as ``predict_proba_one`` of its
        features would give, the context encoded once when the encoding allows."""
        spec = self.spec
        if self._encode is one_hot_union:
            final = self._final
            encoded = one_hot_candidates(context, candidates, spec.crosses, spec.include_ids)
            return [float(final.predict_proba_one(x).get(True, 0.0)) for x in encoded]
        return [
            self.predict_proba_one(
                impression_features(
                    context, item, item_id=i, crosses=spec.crosses, include_ids=spec.include_ids
                )
            )
            for i, item in candidates
        ]

    def predict_proba_one(self, x: dict[str, Any]) -> float:
        if self._encode is not None:
            return float(self._final.predict_proba_one(self._encode(x)).get(True, 0.0))
        return float(self.model.predict_proba_one(x).get(True, 0.0))

    def learn_one(self, x: dict[str, Any], y: bool, w: float = 1.0) -> float:
        """Score ``x``, update the metrics with that score, then learn with weight ``w``.
        Returns the score."""
        kwargs = {} if w == 1.0 or self._weight_kw is None else {self._weight_kw: w}
        if self._encode is not None:
            features, final = self._encode(x), self._final
            proba = final.predict_proba_one(features)
            final.learn_one(features, y, **kwargs)
        else:
            proba = self.model.predict_proba_one(x)
            self.model.learn_one(x, y, **kwargs)
        p = float(proba.get(True, 0.0))
        self.auc.update(y, p)
        self.log_loss.update(y, proba)
        self.recent.append((p, y))
        self.samples_seen += 1
        self.positives += int(y)
        self.predicted += p
        return p

    def metrics(self) -> dict[str, float]:
        n = self.samples_seen
        rate = self.positives / n if n else 0.0
        mean_p = self.predicted / n if n else 0.0
        return {
            "roc_auc": float(self.auc.get()),
            "rolling_roc_auc": exact_auc(self.recent),
            "log_loss": float(self.log_loss.get()),
            "positive_rate": rate,
            "mean_predicted": mean_p,
            # Mean predicted over observed rate: 1 is calibrated, above 1 over-predicts.
            "calibration": mean_p / rate if rate else 0.0,
        }


def one_hot_union(x: dict[str, Any]) -> dict[str, Any]:
    """What ``ModelSpec.build()[0]`` (one-hot, no scaling) makes of ``x``, in one pass instead
    of River's union of two sub-pipelines: the numbers, then ``name_value: 1`` for each string,
    in the same order, so the learner sums its dot products in the same order too.

    >>> one_hot_union({"c:segment": "bargain", "i:price": 9.5, "item": "i7"})
    {'i:price': 9.5, 'c:segment_bargain': 1, 'item_i7': 1}
    """
    out = {name: value for name, value in x.items() if not isinstance(value, str)}
    for name, value in x.items():
        if isinstance(value, str):
            out[f"{name}_{value}"] = 1
    return out


def one_hot_candidates(
    context: Mapping[str, float | bool | str],
    candidates: Iterable[tuple[str, Mapping[str, float | bool | str]]],
    crosses: Iterable[tuple[str, str]],
    include_ids: bool,
) -> Iterator[dict[str, Any]]:
    """``one_hot_union(impression_features(context, item, ...))`` for each candidate of one
    request, with the context encoded once rather than once per candidate: the same keys, values
    and order (numbers, then one-hots, each in feature order), so the same scores to the bit."""
    crosses = tuple(crosses)
    numbers = {f"c:{k}": float(v) for k, v in context.items() if not isinstance(v, str)}
    hots = {f"c:{k}_{v}": 1 for k, v in context.items() if isinstance(v, str)}
    for item_id, item in candidates:
        out: dict[str, Any] = dict(numbers)
        for k, v in item.items():
            if not isinstance(v, str):
                out[f"i:{k}"] = float(v)
        crossed: list[str] = []
        for a, b in crosses:
            feature = cross(context, item, a, b)
            if feature is None:
                continue
            name, value = feature
            if isinstance(value, str):
                crossed.append(f"{name}_{value}")
            else:
                out[name] = value
        out.update(hots)
        for k, v in item.items():
            if isinstance(v, str):
                out[f"i:{k}_{v}"] = 1
        if include_ids:
            out[f"item_{item_id}"] = 1
        for key in crossed:
            out[key] = 1
        yield out


def exact_auc(scored: Iterable[tuple[float, bool]]) -> float:
    """ROC AUC of (score, label) pairs by ranks (Mann-Whitney U), ties counted half; 0 while
    one class is missing, as River's ROCAUC reports.

    >>> exact_auc([(0.9, True), (0.8, False), (0.3, True), (0.1, False)])
    0.75
    """
    pairs = sorted(scored, key=lambda sy: sy[0])
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return 0.0
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j + 1) / 2  # ranks i+1..j share their mean
        rank_sum += mid_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class ThresholdAUC:
    """River's ``metrics.ROCAUC`` (10 thresholds), the same figure for the same inputs, at a
    fraction of the cost: one histogram bin per update instead of ten confusion matrices.

    >>> from river import metrics
    >>> ours, rivers = ThresholdAUC(), metrics.ROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.4), (True, 0.35), (False, 0.1), (False, 0.8)]:
    ...     ours.update(y, p); rivers.update(y, {True: p, False: 1 - p})
    >>> bool(abs(ours.get() - rivers.get()) < 1e-12), round(ours.get(), 4)
    (True, 0.75)
    """

    def __init__(self, n_thresholds: int = 10) -> None:
        self.thresholds = [i / (n_thresholds - 1) for i in range(n_thresholds)]
        self.thresholds[0] -= 1e-7
        self.thresholds[-1] += 1e-7
        # bins[k]: weight of examples whose score is above exactly the k lowest thresholds.
        self.positives = [0.0] * (n_thresholds + 1)
        self.negatives = [0.0] * (n_thresholds + 1)

    def update(self, y: bool, p: float, w: float = 1.0) -> None:
        (self.positives if y else self.negatives)[bisect.bisect_left(self.thresholds, p)] += w

    def get(self) -> float:
        total_pos, total_neg = sum(self.positives), sum(self.negatives)
        tprs, fprs = [], []
        for i in range(len(self.thresholds)):
            # Predicted positive at threshold i: the bins above it.
            tp, fp = sum(self.positives[i + 1 :]), sum(self.negatives[i + 1 :])
            tprs.append(tp / total_pos if total_pos else 0.0)
            fprs.append(fp / total_neg if total_neg else 0.0)
        area = sum(
            (fprs[i + 1] - fprs[i]) * (tprs[i + 1] + tprs[i]) / 2 for i in range(len(fprs) - 1)
        )
        return -area
