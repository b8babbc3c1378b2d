"""What the trainer decides, without Kafka: learn, track resume offsets, checkpoint when due.

>>> from streamlearn.clock import ManualClock
>>> from streamlearn.learning import ModelSpec
>>> example = LabeledExample.model_validate({"example_id": "r:i", "recommendation_id": "r",
...     "user_id": "u", "item_id": "i", "position": 0, "propensity": 1.0, "served_score": None,
...     "model_version": None, "context": {}, "item_features": {}, "label": True,
...     "recommendation_time": 0.0})
>>> policy = TrainingPolicy(checkpoint_every_n=2, checkpoint_every_s=60.0)
>>> t = Training(ModelSpec(), ManualClock(0.0), policy)
>>> t.learn(example, partition=0, offset=41)
>>> t.checkpoint_due()
False
>>> t.skip(partition=0, offset=42)          # a dead-lettered record still moves the offset
>>> t.learn(example, partition=1, offset=7)
>>> t.checkpoint_due(), t.offsets
(True, {0: 43, 1: 8})
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from streamlearn.clock import Clock
from streamlearn.events import ExampleRecord, LabeledExample
from streamlearn.features import example_features
from streamlearn.learning import Learner, ModelSpec
from streamlearn.policy import Policy
from streamlearn.snapshots.base import Snapshot
from streamlearn.snapshots.delta import DeltaEncoder, Encoded


class TrainingPolicy(Policy):
    """When the trainer checkpoints, and what it does with the joiner's corrections."""

    FLAT: ClassVar[dict[str, str]] = {
        "checkpoint_every_n": "checkpoint_every_n",
        "checkpoint_every_s": "checkpoint_every_s",
        "correction_policy": "correction_policy",
        "correction_weight": "correction_weight",
        "metrics_port": "trainer_metrics_port",
        "models": "trainer_models",
        "full_every": "snapshot_full_every",
        "delta_max_changed": "snapshot_delta_max_changed",
    }

    checkpoint_every_n: int = Field(2000, ge=1, description="Snapshot after this many examples.")
    checkpoint_every_s: float = Field(10.0, gt=0, description="...or after this many seconds.")
    correction_policy: Literal["ignore", "learn"] = Field(
        "ignore",
        description="What the trainer does with a joiner's correction example (a late positive "
        "after its negative): ignore it, or learn the positive too, weighted.",
    )
    correction_weight: float = Field(1.0, gt=0, description="Weight of a learned correction.")
    metrics_port: int = Field(
        9109, ge=0, le=65535, description="Prometheus /metrics of the trainer; 0 turns it off."
    )
    models: list[str] = Field(
        default_factory=list,
        description="The configured models this trainer process learns (empty: every one), and "
        "their retrained challengers: a process per subset scales the trainer out, each in a "
        "consumer group of its own, since every model reads every example.",
    )

    full_every: int = Field(
        20,
        ge=1,
        description="A whole snapshot every this many checkpoints; the others are deltas, only "
        "the weights changed since the one before (1: every snapshot whole).",
    )
    delta_max_changed: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A checkpoint whose changed weights are more than this share of all is "
        "written whole.",
    )


REPLAYED = {"correction_policy", "correction_weight"}
"""The policy's fields that change what is learned: each snapshot records them."""


class Training:
    """A learner, the next offset of every input partition, and when to checkpoint."""

    def __init__(
        self,
        spec: ModelSpec,
        clock: Clock,
        policy: TrainingPolicy | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.policy = policy or TrainingPolicy()
        if snapshot is None:
            self.learner = Learner(spec)
            self.offsets: dict[int, int] = {}
            self.version: int | None = None
        else:
            # The restored model keeps the spec it was built from; features must match it.
            self.learner = snapshot.model
            self.spec = self.learner.spec
            self.offsets = dict(snapshot.offsets)
            self.version = snapshot.version
        self._since = 0
        self._last = clock.now()
        self.order: list[tuple[int, int]] = []  # since the last checkpoint: see Snapshot.order
        # The first checkpoint (after a restart too) is whole; the next are deltas of it.
        self.encoder = DeltaEncoder(self.policy.full_every, self.policy.delta_max_changed)
        self._encoded: Encoded | None = None

    @property
    def samples_seen(self) -> int:
        return self.learner.samples_seen

    def learn(self, example: LabeledExample | ExampleRecord, partition: int, offset: int) -> None:
        """Learn one example, unless this model has learned that record already (several models
        share one pass over the topic, each resuming from its own snapshot's offsets)."""
        if offset < self.offsets.get(partition, 0):
            return
        weight = example.weight
        if example.correction:
            # A late positive for an impression already learned as a negative.
            if self.policy.correction_policy == "ignore":
                self.skip(partition, offset)
                return
            weight *= self.policy.correction_weight
        if self.spec.position == "ips":
            weight *= min(1.0 / max(example.propensity, 1e-9), self.spec.ips_clip)
        x = example_features(self.spec, example)
        kind, eid = example.kind, example.example_id
        # The score this model served for the impression, when it was this model that served.
        version = example.model_version or ""
        served = example.served_score if version.split(":")[0] == self.spec.name else None
        # When the impression was, and how long after it the join emitted this.
        at = (example.recommendation_time, example.elapsed_s)
        if kind == "real_negative" and example.weight == 0:
            # The final label of an impression learned already as a fake negative.
            self.learner.settle(x, eid, served, at)
        else:
            self.learner.learn_labeled(x, example.label, weight, kind, eid, served, at)
        self.skip(partition, offset)
        self._since += 1

    def skip(self, partition: int, offset: int) -> None:
        """Move past a record without learning from it (dead-lettered or ignored)."""
        upto = max(self.offsets.get(partition, 0), offset + 1)
        self.offsets[partition] = upto
        if self.order and self.order[-1][0] == partition:
            self.order[-1] = (partition, upto)
        else:
            self.order.append((partition, upto))

    def checkpoint_due(self) -> bool:
        if self._since == 0:
            return False
        p = self.policy
        return (
            self._since >= p.checkpoint_every_n
            or self.clock.now() - self._last >= p.checkpoint_every_s
        )

    def snapshot(self, version: int) -> Snapshot:
        self._encoded = encoded = self.encoder.encode(self.learner)
        return Snapshot(
            model_name=self.spec.name,
            version=version,
            model=self.learner,
            offsets=dict(self.offsets),
            samples_seen=self.learner.samples_seen,
            metrics=self.learner.metrics(),
            spec=self.spec.model_dump(mode="json"),
            parent_version=self.version,
            created_at=self.clock.now(),
            # What a replay needs besides the parent and the examples (see streamlearn.replay).
            extra={"training": self.policy.model_dump(include=REPLAYED)},
            order=list(self.order),
            delta_of=encoded.delta_of,
            payload=encoded.payload,
        )

    def checkpointed(self, version: int) -> None:
        """The snapshot last made is durable as ``version``: the next one's parent."""
        if self._encoded is not None:
            self.encoder.committed(version, self._encoded)
            self._encoded = None
        self.version = version
        self.order = []
        self._since = 0
        self._last = self.clock.now()
