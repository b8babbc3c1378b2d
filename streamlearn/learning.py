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

import inspect
import math
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from river import compose, facto, linear_model, metrics, optim, preprocessing

from streamlearn.delay import DelayCorrection, EsdfmWeights, fnc_served, fnw_weight
from streamlearn.features import (
    MAX_CACHED_ITEMS,
    FeatureValue,
    ItemParts,
    context_parts,
    crossed_parts,
    impression_features,
    item_parts,
    one_hot_candidates,
    one_hot_union,
)

# ThresholdAUC is pickled inside every snapshot's learner under this module's name: it stays
# importable from here so that snapshots written before streamlearn.metrics still load.
from streamlearn.metrics import MeanLogLoss, ThresholdAUC, auc, columns
from streamlearn.retention import RetentionPolicy


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
    delay_correction: DelayCorrection = Field(
        "none",
        description="How the learner undoes the join's label mode (streamlearn.delay): fnw "
        "weights (label_mode fnw), fnc calibration (fnw), esdfm weights (observe), none.",
    )
    position: Literal["ignore", "feature", "ips"] = Field(
        "ignore",
        description="How the slot an item was shown in is handled: ignore; feature (learned as "
        "one bias per slot, and every candidate ranked as if in the top slot); ips (each example "
        "weighted by the inverse of its logged propensity, clipped at ips_clip).",
    )
    ips_clip: float = Field(20.0, ge=1, description="The largest inverse-propensity weight.")
    retention: RetentionPolicy | None = Field(
        None, description="Which of its versions to keep; default: the settings' retention."
    )

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


CandidateScorer = Callable[
    [Mapping[str, FeatureValue], Sequence[tuple[str, Mapping[str, FeatureValue]]]], list[float]
]
"""Scores one request's candidates: see :meth:`Learner.score_candidates`."""

_SHORTCUTS = frozenset({"_final", "_weight_kw", "_encode", "_calibrated", "_neutral", "_items"})
MAX_PROVISIONAL = 1_000_000


class Learner:
    """One model spec learning from a stream, with progressive-validation metrics."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec.build()
        self.samples_seen = 0  # learned
        self.scored = 0  # counted in the metrics, each against its impression's final label
        self.positives = 0
        self.predicted = 0.0
        # Scores of provisional negatives, by example id, until their final label comes.
        self.provisional: dict[str, float] = {}
        self.esdfm = EsdfmWeights() if spec.delay_correction == "esdfm" else None
        # River's metrics are untyped: Any keeps mypy's strictness for our own code.
        self.auc = ThresholdAUC()
        self.log_loss = MeanLogLoss()
        # The last scores and labels; their exact AUC is computed when asked for (at each
        # checkpoint), not updated per example as a rolling River metric would be.
        self.recent: deque[tuple[float, bool]] = deque(maxlen=spec.rolling_window)
        self._served_metrics()
        self._shortcuts()

    def _served_metrics(self) -> None:
        # Served-time figures: each impression scored as this model served it (see record).
        self.served_auc = ThresholdAUC()
        self.served_log_loss = MeanLogLoss()
        self.served_predicted = 0.0
        self.served_logged = 0

    def _shortcuts(self) -> None:
        """What ``learn_one`` would otherwise work out on every example. Not pickled: rebuilt
        from the model and spec when a snapshot is loaded."""
        self._final = self.model[-1]
        self._calibrated = self.spec.delay_correction == "fnc"
        # Candidates are ranked as if each were shown in the top slot.
        self._neutral = 0 if self.spec.position == "feature" else None
        self._items: ItemParts = {}  # one-hot item parts of the candidates scored
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
        # A learner pickled before label modes: every learned example was scored at once.
        state = {"scored": state["samples_seen"], "provisional": {}, "esdfm": None, **state}
        self.__dict__.update(state)
        for name in ("log_loss", "served_log_loss"):  # River's, in a snapshot from before
            if isinstance(state.get(name), metrics.LogLoss):
                setattr(self, name, MeanLogLoss.of(state[name]))
        if "served_auc" not in state:  # and none served-time figures: they start now
            self._served_metrics()
        self._shortcuts()

    def serving_features(
        self, context: Mapping[str, float | bool | str], item_id: str, item: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A candidate's features as this model scores it for ranking: under the position
        ``feature``, as if shown in the top slot."""
        spec = self.spec
        return impression_features(
            context,
            item,
            item_id=item_id,
            crosses=spec.crosses,
            include_ids=spec.include_ids,
            position=self._neutral,
        )

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
            encoded = one_hot_candidates(
                context, candidates, spec.crosses, spec.include_ids, self._neutral, self._items
            )
            if type(final) is linear_model.LogisticRegression:
                # What its predict_proba_one computes (the same float), without the dict of
                # both classes it builds: a tenth of the time to score 100 candidates.
                w, b, mean = final._weights, final.intercept, final.loss.mean_func
                raw = [float(mean(w.dot(x) + b)) for x in encoded]
            else:
                raw = [float(final.predict_proba_one(x).get(True, 0.0)) for x in encoded]
            return [fnc_served(p) for p in raw] if self._calibrated else raw
        return [
            self.predict_proba_one(self.serving_features(context, i, item))
            for i, item in candidates
        ]

    def frozen_scorer(self) -> CandidateScorer:
        """:meth:`score_candidates` for a learner that learns no more (a served version): a
        logistic regression on one-hot features is scored as its bias plus the context's part of
        the dot product (once per request) and each item's part, its own features' and its
        crosses' (once per item and crossed context values, kept: the weights no longer
        change). The same sum in another order: within
        1e-15 of :meth:`score_candidates`, in under half the time. Any other model: as is."""
        if (
            self._encode is not one_hot_union
            or type(self._final) is not linear_model.LogisticRegression
        ):
            return self.score_candidates
        return _FrozenLinear(self)

    def predict_proba_one(self, x: dict[str, Any]) -> float:
        if self._encode is not None:
            raw = float(self._final.predict_proba_one(self._encode(x)).get(True, 0.0))
        else:
            raw = float(self.model.predict_proba_one(x).get(True, 0.0))
        return fnc_served(raw) if self._calibrated else raw

    def learn_one(
        self,
        x: dict[str, Any],
        y: bool,
        w: float = 1.0,
        weigh: Callable[[float], float] | None = None,
        record: bool = True,
        served: float | None = None,
    ) -> float:
        """Score ``x``, then learn it with weight ``w`` (times ``weigh`` of the score, for an
        importance weight with the score held constant), and unless told otherwise count the
        score in the metrics. Returns the score as served."""
        encoded = self._encode is not None
        features = self._encode(x) if self._encode is not None else x
        step = self._final if encoded else self.model
        raw = float(step.predict_proba_one(features).get(True, 0.0))
        if weigh is not None:
            w *= weigh(raw)
        kwargs = {} if w == 1.0 or self._weight_kw is None else {self._weight_kw: w}
        step.learn_one(features, y, **kwargs)
        self.samples_seen += 1
        p = fnc_served(raw) if self._calibrated else raw
        if record:
            self.record(y, p, served)
        return p

    def record(self, y: bool, p: float, served: float | None = None) -> None:
        """Count a score against its impression's final label: ``p`` (this model's, before it
        learned the impression) in the progressive metrics; in the served-time metrics the
        score this model served for it (``served``, logged by the API), else ``p``."""
        self.auc.update(y, p)
        self.log_loss.update(y, p)
        self.recent.append((p, y))
        self.scored += 1
        self.positives += int(y)
        self.predicted += p
        at = p if served is None else served
        self.served_auc.update(y, at)
        self.served_log_loss.update(y, at)
        self.served_predicted += at
        self.served_logged += served is not None

    def learn_labeled(
        self,
        x: dict[str, Any],
        y: bool,
        w: float,
        kind: str | None,
        example_id: str,
        served: float | None = None,
        at: tuple[float, float | None] = (0.0, None),
    ) -> None:
        """An example of the join, by its kind (:mod:`streamlearn.delay`): a provisional
        negative's score waits for its impression's final label; the spec's correction
        weighs what is learned."""
        correction = self.spec.delay_correction
        weigh = (lambda p: fnw_weight(p, y)) if correction == "fnw" else None
        aux = one_hot_union(x) if self.esdfm is not None else None
        if self.esdfm is not None and aux is not None:
            w *= self.esdfm.weight(aux, y)
        if kind == "fake_negative":
            self._hold(example_id, self.learn_one(x, y, w, weigh, record=False))
            return
        held = self.provisional.pop(example_id, None) if kind == "delayed_positive" else None
        self.learn_one(x, y, w, weigh, record=held is None, served=served)
        if held is not None:
            self.record(True, held, served)
        if self.esdfm is not None and aux is not None and kind in ("immediate", "delayed_positive"):
            self.esdfm.final(aux, kind, held is not None, *at)

    def settle(
        self,
        x: dict[str, Any],
        example_id: str,
        served: float | None = None,
        at: tuple[float, float | None] = (0.0, None),
    ) -> None:
        """The final negative of an impression learned already as a fake negative: its held
        score counts now; nothing is learned again."""
        held = self.provisional.pop(example_id, None)
        if held is not None:
            self.record(False, held, served)
        if self.esdfm is not None:
            self.esdfm.final(one_hot_union(x), "real_negative", True, *at)

    def _hold(self, example_id: str, p: float) -> None:
        self.provisional[example_id] = p
        if len(self.provisional) > MAX_PROVISIONAL:  # final labels lost (a join reset): forget
            del self.provisional[next(iter(self.provisional))]

    def metrics(self) -> dict[str, float]:
        """Served-time figures first (each impression scored as this model served it, or as
        it scored it when it first saw it), then the progressive ones."""
        n = self.scored
        rate = self.positives / n if n else 0.0
        mean_p = self.predicted / n if n else 0.0
        mean_served = self.served_predicted / n if n else 0.0
        return {
            "served_roc_auc": float(self.served_auc.get()),
            "served_log_loss": float(self.served_log_loss.get()),
            # Mean predicted over observed rate: 1 is calibrated, above 1 over-predicts.
            "served_calibration": mean_served / rate if rate else 0.0,
            "served_logged_share": self.served_logged / n if n else 0.0,
            "roc_auc": float(self.auc.get()),
            "rolling_roc_auc": auc(*columns(self.recent)),
            "log_loss": float(self.log_loss.get()),
            "positive_rate": rate,
            "mean_predicted": mean_p,
            "calibration": mean_p / rate if rate else 0.0,
        }


_Part = tuple[dict[str, FeatureValue], tuple[str, ...] | None, float]


class _FrozenLinear:
    """:meth:`Learner.frozen_scorer` of a logistic regression on one-hot features."""

    def __init__(self, learner: Learner) -> None:
        final = learner._final
        # A plain dict: the served weights no longer change, and its lookups are the fastest.
        self.weights: dict[str, float] = dict(final._weights)
        self.bias = float(final.intercept)
        self.spec = learner.spec
        self.calibrated = learner._calibrated
        self.position = learner._neutral
        # The features the crosses read: with the item's own, all an item's part depends on.
        self.crossed = tuple(dict.fromkeys(name for pair in self.spec.crosses for name in pair))
        # Each item's part of the dot product (its own features and its crosses with the
        # context), by the crossed context values' reprs and the item's id: with the features
        # it was made of, and (when any crossed one is not a string) their reprs, which tell
        # apart what is equal but crosses into another name: True and 1.0, 0.0 and -0.0.
        self.parts: dict[tuple[str, ...], dict[str, _Part]] = {}
        self.kept = 0

    def _dot(self, numbers: Mapping[str, float], hots: Iterable[str]) -> float:
        w = self.weights.get
        return sum(w(k, 0.0) * v for k, v in numbers.items()) + sum(w(k, 0.0) for k in hots)

    def _part(
        self, context: Mapping[str, FeatureValue], item_id: str, item: Mapping[str, FeatureValue]
    ) -> float:
        numbers, hots = item_parts(item_id, item, self.spec.include_ids, None)
        crossed, crossed_hots = crossed_parts(context, item, self.spec.crosses)
        return self._dot(numbers, hots) + self._dot(crossed, crossed_hots)

    def __call__(
        self,
        context: Mapping[str, FeatureValue],
        candidates: Sequence[tuple[str, Mapping[str, FeatureValue]]],
    ) -> list[float]:
        base = self.bias + self._dot(*context_parts(context))
        if self.position is not None:
            base += self.weights.get(f"pos_{self.position}", 0.0)
        names = self.crossed
        parts = self.parts.get(key := tuple(map(repr, map(context.get, names))))
        if parts is None:
            parts = self.parts[key] = {}
        out = []
        for item_id, item in candidates:
            kept = parts.get(item_id)
            if (
                kept is None
                or kept[0] != item
                or (kept[1] is not None and kept[1] != tuple(map(repr, map(item.get, names))))
            ):
                if self.kept >= MAX_CACHED_ITEMS:
                    self.parts, self.kept = {key: (parts := {})}, 0
                forms = None
                if any(not isinstance(item.get(n, ""), str) for n in names):
                    forms = tuple(map(repr, map(item.get, names)))
                kept = parts[item_id] = (dict(item), forms, self._part(context, item_id, item))
                self.kept += 1
            part = kept[2]
            z = base + part
            # River's sigmoid, clamped as it is.
            p = 0.0 if z < -30 else 1.0 if z > 30 else 1.0 / (1.0 + math.exp(-z))
            out.append(fnc_served(p) if self.calibrated else p)
        return out
