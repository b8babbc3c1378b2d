"""The trainer process (confluent-kafka): poll examples, learn, checkpoint, then commit.

Every configured model (the champion and its challengers; with ``TRAINER_MODELS``, the subset
this process learns) learns from one pass over the examples, each in its own lineage of
snapshots. Order on every checkpoint: flush dead letters,
write each model's snapshot (model + the next offset of every partition it has learned) to the
store, and only then commit to Kafka the offsets every model has made durable. On start each
model restores its latest snapshot; every assigned partition is read from the least of the
models' offsets (not the committed ones), and a model skips the records it has learned already,
so a crash at any point neither loses nor double-learns an example.

Run: ``python -m consumers.trainer``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge

from consumers.process import KafkaProcess
from streamlearn.clock import SystemClock
from streamlearn.errors import InvalidEventError, SnapshotNotFound, StoreUnavailable
from streamlearn.events import DeadLetter, parse_example
from streamlearn.faults import failpoint
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.snapshots import SnapshotStore, open_store
from streamlearn.training import Training, TrainingPolicy
from topics import producer_config

log = logging.getLogger("streamlearn.trainer")

CHALLENGERS_POLL_S = 10.0
"""How often the trainer looks for challengers retrained from its models."""

CHECKPOINT_FAILURES = Counter(
    "streamlearn_trainer_checkpoint_failures", "Checkpoints the snapshot store did not complete"
)
DURABLE_VERSION = Gauge(
    "streamlearn_trainer_durable_version", "Last durable snapshot version", ["model"]
)
SAMPLES = Gauge(
    "streamlearn_trainer_samples_seen", "Examples learned, at the last checkpoint", ["model"]
)
METRIC = Gauge(
    "streamlearn_trainer_progressive_metric",
    "Progressive-validation metrics at the last checkpoint",
    ["model", "metric"],
)


def restore(store: SnapshotStore, spec: ModelSpec, policy: TrainingPolicy) -> Training:
    try:
        snapshot = store.get(spec.name)
        log.info(
            "resuming %s from v%d at offsets %s (%d samples seen)",
            spec.name,
            snapshot.version,
            snapshot.offsets,
            snapshot.samples_seen,
        )
    except SnapshotNotFound:
        snapshot = None
        log.info("no snapshot of %s yet: it learns from the beginning", spec.name)
    if snapshot is not None and snapshot.model.spec != spec:
        log.warning(
            "%s: the configured spec differs from the snapshot's; the lineage continues with "
            "its own spec %s (a new spec needs a new model name)",
            spec.name,
            snapshot.model.spec,
        )
    return Training(spec, SystemClock(), policy, snapshot)


class Trainer(KafkaProcess):
    name = "trainer"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.examples = settings.topic("examples")
        self.dead_letters = settings.topic("dead_letters")
        self.store = open_store(settings)
        self.registry = Registry(self.store)
        self.specs = settings.trained_models
        self.trainings = [restore(self.store, spec, settings.training) for spec in self.specs]
        # With TRAINER_MODELS, one process per subset reads every example: the one learning the
        # champion says which are unreadable, once.
        self.dead_lettering = settings.model in self.specs
        self.followed_at = 0.0
        self.follow_challengers()
        self.producer = Producer(producer_config(settings))
        self.retry_at = 0.0
        self.failures = 0

    def metrics_port(self) -> int:
        return self.settings.training.metrics_port

    def group(self) -> str:
        return self.settings.trainer_group

    def resume_offset(self, partition: int) -> int:
        """Where to read a partition from: the least next offset of all the models."""
        offsets = [t.offsets.get(partition, OFFSET_BEGINNING) for t in self.trainings]
        return min(offsets)

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = self.resume_offset(tp.partition)
        log.info("assigned %s", [(tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)

    def subscribe(self) -> None:
        self.consumer.subscribe([self.examples], on_assign=self.on_assign)

    def step(self) -> int:
        """One batch: consume, learn, checkpoint when due. Returns the records read."""
        read = 0
        for msg in self.consume(500, timeout=0.5):
            self.handle(msg)
            read += 1
        self.producer.poll(0)
        if time.monotonic() - self.followed_at >= CHALLENGERS_POLL_S:
            self.follow_challengers()
        due = any(t.checkpoint_due() for t in self.trainings)
        if due and time.monotonic() >= self.retry_at:
            self.checkpoint()
        return read

    def run(self) -> None:
        self.subscribe()
        while not self.stopping:
            self.step()
        if any(t.checkpoint_due() for t in self.trainings):
            self.checkpoint()
        self.consumer.close()

    def handle(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None  # set on every fetched record
        try:
            example = parse_example(msg.value())
        except InvalidEventError as exc:
            # Dead letters are flushed before each snapshot: below every model's offsets this
            # one was sent before a restart.
            if self.dead_lettering and any(
                offset >= t.offsets.get(partition, 0) for t in self.trainings
            ):
                letter = DeadLetter.of(
                    str(exc), self.examples, partition, offset, msg.key(), msg.value(), time.time()
                )
                self.producer.produce(
                    self.dead_letters,
                    key=self.examples.encode(),
                    value=letter.model_dump_json().encode(),
                )
            for t in self.trainings:
                t.skip(partition, offset)
            return
        for t in self.trainings:
            t.learn(example, partition, offset)
        failpoint("trainer.learned")

    def follow_challengers(self) -> None:
        """Learn, beside the configured models, the challengers retrained from them (the daily
        drift job backfills one and names it in the model's registry), from their own
        snapshots' offsets: the partitions read further than that are read again from there,
        and every other model skips what it has learned already."""
        self.followed_at = time.monotonic()
        known = {t.spec.name for t in self.trainings}
        for spec in self.specs:
            try:
                named = self.store.read_registry(spec.name).challengers
            except StoreUnavailable as exc:
                log.warning("challengers of %s not read: %s", spec.name, exc)
                continue
            for name in named:
                if name in known:
                    continue
                try:
                    snapshot = self.store.get(name)
                except (SnapshotNotFound, StoreUnavailable) as exc:
                    log.warning("challenger %s not followed yet: %s", name, exc)
                    continue
                t = Training(snapshot.model.spec, SystemClock(), self.settings.training, snapshot)
                self.trainings.append(t)
                known.add(name)
                log.info(
                    "learning %s live beside %s, from v%d at offsets %s",
                    name,
                    spec.name,
                    snapshot.version,
                    snapshot.offsets,
                )
                self.rewind(t)

    def rewind(self, t: Training) -> None:
        """Read again, from ``t``'s offsets, the assigned partitions read past them."""
        try:
            assigned = self.consumer.assignment()
        except KafkaException:
            return  # not subscribed yet: assignment starts every partition at resume_offset
        if not assigned:
            return
        for tp in self.consumer.position(assigned):
            want = t.offsets.get(tp.partition, OFFSET_BEGINNING)
            if tp.offset >= 0 and (want == OFFSET_BEGINNING or want < tp.offset):
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, want))
                log.info("partition %d read again from %s for %s", tp.partition, want, t.spec.name)

    def checkpoint(self) -> None:
        if self.producer.flush(10) > 0:
            log.warning("dead letters not yet delivered: checkpoint postponed")
            return
        for t in self.trainings:
            if not t.checkpoint_due():
                continue
            failpoint("trainer.before_snapshot")
            try:
                version = self.store.next_version(t.spec.name)
                self.store.put(t.snapshot(version))
            except StoreUnavailable as exc:
                self.failures += 1
                CHECKPOINT_FAILURES.inc()
                # Capped exponential backoff; learning goes on, and no offset is committed past
                # the last durable snapshot.
                self.retry_at = time.monotonic() + min(30.0, 0.5 * 2**self.failures)
                log.warning(
                    "checkpoint of %s incomplete (%s): still learning, offsets stay at v%s; "
                    "retrying in %.1f s",
                    t.spec.name,
                    exc,
                    t.version,
                    self.retry_at - time.monotonic(),
                )
                return
            failpoint("trainer.after_snapshot")
            t.checkpointed(version)
            self.retain(t)
            metrics = t.learner.metrics()
            DURABLE_VERSION.labels(t.spec.name).set(version)
            SAMPLES.labels(t.spec.name).set(t.samples_seen)
            for name, value in metrics.items():
                METRIC.labels(t.spec.name, name).set(value)
            log.info(
                "checkpoint %s v%d: %d samples, offsets %s, metrics %s",
                t.spec.name,
                version,
                t.samples_seen,
                t.offsets,
                metrics,
            )
        self.failures = 0
        # Committed offsets are for lag monitoring: the trainer resumes from its snapshots.
        partitions = set().union(*(t.offsets for t in self.trainings))
        durable = [
            TopicPartition(self.examples, p, self.resume_offset(p))
            for p in partitions
            if all(p in t.offsets for t in self.trainings)
        ]
        if durable:
            try:
                self.consumer.commit(offsets=durable, asynchronous=False)
            except KafkaException as exc:  # the broker is away: the next checkpoint commits
                log.warning("offsets for lag monitoring not committed: %s", exc.args[0])

    def retain(self, t: Training) -> None:
        """The model's retention, after each checkpoint: storage stays bounded unattended. A
        store that fails here fails nothing else; the next checkpoint tries again."""
        spec = t.spec
        policy = spec.retention or self.settings.retention
        if not policy.automatic:
            return
        try:
            plan = self.registry.retain(spec.name, policy, t.clock.now())
        except StoreUnavailable as exc:
            log.warning("retention of %s postponed: %s", spec.name, exc)
            return
        if plan.delete:
            log.info("retention of %s: deleted %s, kept %d", spec.name, plan.delete, len(plan.kept))


if __name__ == "__main__":
    Trainer.main()
