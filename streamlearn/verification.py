"""Deterministic replay: a snapshot rebuilt from its parent and the examples between them, and
compared with what the trainer wrote, bit for bit.

A snapshot says which examples it holds (its offsets, against its parent's) and how they were
learned (:attr:`Snapshot.order`: Kafka orders records within a partition only, so the trainer
records the runs of partitions it learned in). Replaying them through the trainer's own code
(:class:`Training`, with the correction policy the snapshot records) from the parent's model
must give the same model: the same :func:`fingerprint`, which hashes every weight's IEEE-754
bits. The examples come from the event archive, or from the topic while Kafka still holds them.
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import duckdb
from confluent_kafka import Consumer, TopicPartition

from streamlearn.backfill import decoded
from streamlearn.clock import ManualClock
from streamlearn.errors import InvalidEventError, ReplayError
from streamlearn.events import ExampleRecord, parse_example
from streamlearn.fingerprint import fingerprint
from streamlearn.learning import ModelSpec
from streamlearn.snapshots.base import Snapshot
from streamlearn.training import Training, TrainingPolicy

Example = tuple[ExampleRecord, int, int]
"""An example, its partition and its offset."""


@dataclass(frozen=True)
class Verdict:
    model: str
    version: int
    parent: int | None
    examples: int
    """Learned in the replay; the snapshot's samples_seen less its parent's, when identical."""
    expected: str
    rebuilt: str
    source: str

    @property
    def identical(self) -> bool:
        return self.expected == self.rebuilt


def span(parent: Snapshot | None, child: Snapshot) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition, the offsets from which (the parent's) and up to which (the child's,
    exclusive) the child learned."""
    starts = dict(parent.offsets) if parent else {}
    return {p: starts.get(p, 0) for p in child.offsets}, dict(child.offsets)


def rebuild(parent: Snapshot | None, child: Snapshot, examples: Iterable[Example]) -> Training:
    """The child's model, learned again from the parent's (a copy: the parent is left as it
    was) through the examples, in the child's recorded order."""
    order = child.order
    if not order:
        starts, ends = span(parent, child)
        moved = [p for p in ends if ends[p] != starts[p]]
        if len(moved) > 1:
            raise ReplayError(
                f"{child.model_name} v{child.version} records no learning order (written by a "
                "streamlearn before 0.9) and learned from several partitions: it cannot be replayed"
            )
        order = [(p, child.offsets[p]) for p in moved]
    policy = TrainingPolicy.model_validate(child.extra.get("training", {}))
    clock = ManualClock(child.created_at)
    if parent is None:
        training = Training(ModelSpec.model_validate(child.spec), clock, policy)
    else:
        training = Training(ModelSpec(), clock, policy, copy.deepcopy(parent))
    queues: dict[int, deque[tuple[ExampleRecord, int]]] = {}
    for example, partition, offset in examples:
        queues.setdefault(partition, deque()).append((example, offset))
    for partition, upto in order:
        queue = queues.get(partition, deque())
        while queue and queue[0][1] < upto:
            example, offset = queue.popleft()
            training.learn(example, partition, offset)
        training.skip(partition, upto - 1)  # the run ended on a record not learned, maybe
    return training


def verify(
    parent: Snapshot | None, child: Snapshot, examples: Iterable[Example], source: str
) -> Verdict:
    before = parent.samples_seen if parent else 0
    training = rebuild(parent, child, examples)
    return Verdict(
        model=child.model_name,
        version=child.version,
        parent=child.parent_version,
        examples=training.samples_seen - before,
        expected=fingerprint(child.model),
        rebuilt=fingerprint(training.learner),
        source=source,
    )


def archived(
    con: duckdb.DuckDBPyConnection, starts: dict[int, int], ends: dict[int, int]
) -> list[Example] | None:
    """The archived examples of the span, in offset order per partition; None when the archive
    does not hold the whole span (it starts later, or has not reached its end yet)."""
    held = dict.fromkeys(ends, (None, None))
    rows = con.execute(
        "SELECT kafka_partition, min(kafka_offset), max(kafka_offset) FROM examples GROUP BY 1"
    ).fetchall()
    held.update({int(p): (lo, hi) for p, lo, hi in rows if int(p) in ends})
    for p, end in ends.items():
        lo, hi = held[p]
        if starts[p] >= end:
            continue
        # The archive holds a partition from its first record on, in order; the span's last
        # record (end - 1, a record the trainer read) must be in it.
        if lo is None or hi is None or hi < end - 1 or (lo > starts[p] and starts[p] > 0):
            return None
    cuts = " OR ".join(
        f"(kafka_partition = {int(p)} AND kafka_offset >= {int(starts[p])}"
        f" AND kafka_offset < {int(e)})"
        for p, e in ends.items()
        if starts[p] < e
    )
    if not cuts:
        return []
    result = con.execute(f"SELECT * FROM examples WHERE {cuts} ORDER BY kafka_offset")
    return list(decoded(result))


def from_topic(
    bootstrap: str, topic: str, starts: dict[int, int], ends: dict[int, int], timeout: float = 30
) -> Iterator[Example]:
    """The span's examples read from the topic (read_committed, as the trainer reads it);
    records that do not parse are skipped, as the trainer skips them."""
    todo = {p: e for p, e in ends.items() if starts[p] < e}
    if not todo:
        return
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"streamlearn-verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        low = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout)[0] for p in todo
        }
        gone = {p: low[p] for p in todo if low[p] > starts[p]}
        if gone:
            raise ReplayError(
                f"the topic no longer holds the span (its first offsets {gone}, the span from "
                f"{ {p: starts[p] for p in gone} }): replay from the archive"
            )
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            msgs = consumer.consume(1000, timeout=timeout)
            if not msgs:
                raise ReplayError(f"the topic ended before the span did: partitions {todo} short")
            for msg in msgs:
                if msg.error():
                    continue
                p, offset = msg.partition(), msg.offset()
                assert p is not None and offset is not None
                if p not in todo or offset >= todo[p]:
                    continue
                if offset >= todo[p] - 1:
                    del todo[p]
                try:
                    yield parse_example(msg.value()), p, offset
                except InvalidEventError:
                    continue
    finally:
        consumer.close()
