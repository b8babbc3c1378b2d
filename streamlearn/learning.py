"""Model specs from configuration, and the learner that validates progressively.

A :class:`ModelSpec` names a River pipeline and its hyperparameters; data scientists change the
model by changing configuration, never code. A :class:`Learner` scores every example before it
learns from it (progressive validation), so its metrics are honest out-of-sample figures.

>>> learner = Learner(ModelSpec(learning_rate=0.5))
>>> for _ in range(50):
...     _ = learner.learn_one({"x": 1.0}, True)
...     _ = learner.learn_one({"x": -1.0}, False)
>>> learner.predict_proba_one({"x": 1.0}) > 0.9
True
>>> learner.samples_seen
100
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from river import compose, linear_model, metrics, optim, preprocessing, utils


class ModelSpec(BaseModel):
    """A River pipeline and its hyperparameters, validated at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("ctr", pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    learner: Literal["logistic_regression"] = "logistic_regression"
    encoding: Literal["onehot", "hash"] = Field(
        "onehot", description="onehot keeps one weight per feature; hash bounds memory."
    )
    hash_features: int = Field(2**18, ge=16, le=2**26)
    optimizer: Literal["adagrad", "sgd"] = Field(
        "adagrad",
        description="adagrad: per-feature learning rates, as CTR models use. Plain SGD lets a "
        "dense numeric feature swing with every burst of one label, and the join emits such "
        "bursts (positives at once, negatives when their window closes).",
    )
    learning_rate: float = Field(0.1, gt=0, le=10)
    l2: float = Field(0.0, ge=0)
    crosses: tuple[tuple[str, str], ...] = (("segment", "category"),)
    include_ids: bool = True
    rolling_window: int = Field(2000, ge=10, description="Examples in the rolling metrics.")

    def build(self) -> Any:
        steps: list[Any] = []
        if self.encoding == "hash":
            steps.append(preprocessing.FeatureHasher(n_features=self.hash_features, seed=0))
        optimizer = (
            optim.AdaGrad(self.learning_rate)
            if self.optimizer == "adagrad"
            else optim.SGD(self.learning_rate)
        )
        steps.append(linear_model.LogisticRegression(optimizer=optimizer, l2=self.l2))
        return compose.Pipeline(*steps)


class Learner:
    """One model spec learning from a stream, with progressive-validation metrics."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec.build()
        self.samples_seen = 0
        self.positives = 0
        # River's metrics are untyped: Any keeps mypy's strictness for our own code.
        self.auc: Any = metrics.ROCAUC()
        self.log_loss: Any = metrics.LogLoss()
        self.rolling_auc: Any = utils.Rolling(metrics.ROCAUC, window_size=spec.rolling_window)

    def predict_proba_one(self, x: dict[str, float]) -> float:
        return float(self.model.predict_proba_one(x).get(True, 0.5))

    def learn_one(self, x: dict[str, float], y: bool, w: float = 1.0) -> float:
        """Score ``x``, update the metrics with that score, then learn with weight ``w``.
        Returns the score."""
        p = self.predict_proba_one(x)
        self.auc.update(y, p)
        self.log_loss.update(y, p)
        self.rolling_auc.update(y, p)
        self.model.learn_one(x, y, w=w)
        self.samples_seen += 1
        self.positives += int(y)
        return p

    def metrics(self) -> dict[str, float]:
        return {
            "roc_auc": float(self.auc.get()),
            "rolling_roc_auc": float(self.rolling_auc.get()),
            "log_loss": float(self.log_loss.get()),
            "positive_rate": self.positives / self.samples_seen if self.samples_seen else 0.0,
        }
