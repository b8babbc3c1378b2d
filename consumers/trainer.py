"""The trainer process (confluent-kafka): poll examples, learn, checkpoint, then commit.

Order on every checkpoint: flush dead letters, write the snapshot (model + next offsets) to the
store, and only then commit those offsets to Kafka. On start it restores the model's latest
snapshot and seeks every assigned partition to the snapshot's offsets (not the committed ones),
so a crash at any point neither loses nor double-learns an example.

Run: ``python -m consumers.trainer``.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client import Counter, Gauge, start_http_server

from streamlearn.clock import SystemClock
from streamlearn.errors import InvalidEventError, SnapshotNotFound, StoreUnavailable
from streamlearn.events import DeadLetter, LabeledExample, parse
from streamlearn.settings import get_settings
from streamlearn.snapshots import open_store
from streamlearn.training import Training
from topics import consumer_config, declared, producer_config

log = logging.getLogger("streamlearn.trainer")

CHECKPOINT_FAILURES = Counter(
    "streamlearn_trainer_checkpoint_failures", "Checkpoints the snapshot store did not complete"
)
DURABLE_VERSION = Gauge(
    "streamlearn_trainer_durable_version", "Last snapshot version durable and committed"
)
SAMPLES = Gauge("streamlearn_trainer_samples_seen", "Examples learned, as of the last checkpoint")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    topics = declared(settings)
    examples, dead_letters = topics["examples"].name, topics["dead_letters"].name
    store = open_store(settings)
    if settings.trainer_metrics_port:
        start_http_server(settings.trainer_metrics_port, addr="127.0.0.1")
    spec = settings.model
    try:
        snapshot = store.get(spec.name)
        log.info(
            "resuming %s from version %d at offsets %s (%d samples seen)",
            spec.name,
            snapshot.version,
            snapshot.offsets,
            snapshot.samples_seen,
        )
    except SnapshotNotFound:
        snapshot = None
        log.info("no snapshot of %s yet: starting from the beginning of %s", spec.name, examples)
    if snapshot is not None and snapshot.model.spec != spec:
        log.warning(
            "configured spec differs from the snapshot's; continuing the snapshot's lineage "
            "with its own spec %s",
            snapshot.model.spec,
        )
    training = Training(
        spec, SystemClock(), settings.checkpoint_every_n, settings.checkpoint_every_s, snapshot
    )

    consumer = Consumer(consumer_config(settings, f"trainer-{spec.name}"))
    producer = Producer(producer_config(settings))

    def on_assign(c: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = training.offsets.get(tp.partition, OFFSET_BEGINNING)
        log.info("assigned %s", [(tp.partition, tp.offset) for tp in partitions])
        c.assign(partitions)

    consumer.subscribe([examples], on_assign=on_assign)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    retry_at = 0.0
    failures = 0

    def checkpoint() -> None:
        nonlocal retry_at, failures
        if producer.flush(10) > 0:
            log.warning("dead letters not yet delivered: checkpoint postponed")
            return
        try:
            version = store.next_version(spec.name)
            store.put(training.snapshot(version))
        except StoreUnavailable as exc:
            failures += 1
            CHECKPOINT_FAILURES.inc()
            # Capped exponential backoff; learning goes on, offsets stay at the last durable one.
            retry_at = time.monotonic() + min(30.0, 0.5 * 2**failures)
            log.warning(
                "checkpoint v%d incomplete (%s): still learning; offsets stay committed at "
                "v%s; retrying in %.1f s",
                version,
                exc,
                training.version,
                retry_at - time.monotonic(),
            )
            return
        failures = 0
        consumer.commit(
            offsets=[TopicPartition(examples, p, o) for p, o in training.offsets.items()],
            asynchronous=False,
        )
        training.checkpointed(version)
        DURABLE_VERSION.set(version)
        SAMPLES.set(training.samples_seen)
        log.info(
            "checkpoint %s v%d: %d samples, offsets %s, metrics %s",
            spec.name,
            version,
            training.samples_seen,
            training.offsets,
            training.learner.metrics(),
        )

    while not stopping:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            if msg.error():
                log.warning("consume error: %s", msg.error())
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None  # set on every fetched record
            try:
                example = parse(LabeledExample, msg.value())
            except InvalidEventError as exc:
                letter = DeadLetter.of(
                    str(exc),
                    examples,
                    partition,
                    offset,
                    msg.key(),
                    msg.value(),
                    time.time(),
                )
                producer.produce(
                    dead_letters, key=examples.encode(), value=letter.model_dump_json().encode()
                )
                training.skip(partition, offset)
                continue
            training.learn(example, partition, offset)
        producer.poll(0)
        if training.checkpoint_due() and time.monotonic() >= retry_at:
            checkpoint()
    if training.checkpoint_due():
        checkpoint()
    consumer.close()


if __name__ == "__main__":
    main()
