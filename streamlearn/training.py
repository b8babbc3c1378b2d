"""What the trainer decides, without Kafka: learn, track resume offsets, checkpoint when due.

>>> from streamlearn.clock import ManualClock
>>> from streamlearn.learning import ModelSpec
>>> example = LabeledExample.model_validate({"example_id": "r:i", "recommendation_id": "r",
...     "user_id": "u", "item_id": "i", "position": 0, "propensity": 1.0, "served_score": None,
...     "model_version": None, "context": {}, "item_features": {}, "label": True,
...     "recommendation_time": 0.0})
>>> t = Training(ModelSpec(), ManualClock(0.0), every_n=2, every_s=60.0)
>>> t.learn(example, partition=0, offset=41)
>>> t.checkpoint_due()
False
>>> t.skip(partition=0, offset=42)          # a dead-lettered record still moves the offset
>>> t.learn(example, partition=1, offset=7)
>>> t.checkpoint_due(), t.offsets
(True, {0: 43, 1: 8})
"""

from __future__ import annotations

from typing import Literal

from streamlearn.clock import Clock
from streamlearn.events import ExampleRecord, LabeledExample
from streamlearn.features import Features, impression_features
from streamlearn.learning import Learner, ModelSpec
from streamlearn.snapshots.base import Snapshot


def example_features(spec: ModelSpec, example: LabeledExample | ExampleRecord) -> Features:
    return impression_features(
        example.context,
        example.item_features,
        item_id=example.item_id,
        crosses=spec.crosses,
        include_ids=spec.include_ids,
    )


class Training:
    """A learner, the next offset of every input partition, and when to checkpoint."""

    def __init__(
        self,
        spec: ModelSpec,
        clock: Clock,
        every_n: int,
        every_s: float,
        snapshot: Snapshot | None = None,
        correction_policy: Literal["ignore", "learn"] = "ignore",
        correction_weight: float = 1.0,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.every_n = every_n
        self.every_s = every_s
        self.correction_policy = correction_policy
        self.correction_weight = correction_weight
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
            if self.correction_policy == "ignore":
                self.skip(partition, offset)
                return
            weight *= self.correction_weight
        x = example_features(self.spec, example)
        self.learner.learn_one(x, example.label, weight)
        self.skip(partition, offset)
        self._since += 1

    def skip(self, partition: int, offset: int) -> None:
        """Move past a record without learning from it (dead-lettered or ignored)."""
        self.offsets[partition] = max(self.offsets.get(partition, 0), offset + 1)

    def checkpoint_due(self) -> bool:
        if self._since == 0:
            return False
        return self._since >= self.every_n or self.clock.now() - self._last >= self.every_s

    def snapshot(self, version: int) -> Snapshot:
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
        )

    def checkpointed(self, version: int) -> None:
        self.version = version
        self._since = 0
        self._last = self.clock.now()
