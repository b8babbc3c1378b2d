"""Backfill: a model spec trained on archived history, as a snapshot lineage the live trainer
continues.

The archived examples of a period go through the trainer's own code (:class:`Training`: the same
features, learner, corrections and checkpoints) in the order the topic held them: each partition
in offset order, the partitions interleaved by Kafka timestamp. Per partition the backfill stops
at the last archived example of the period, and takes every archived example up to there whose
day is not before the period (one of a later day at a lower offset is learned too, so that
nothing below the cut is left out). The snapshots it writes carry, per partition, the offset one
past that last example: the live trainer resumes every model from its snapshot's offsets, so it
goes on from the topic exactly there, nothing skipped, nothing learned twice.

A backfill starts a lineage: the model must have no snapshot yet (a new challenger, say).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec
import orjson

from streamlearn.archive import SPECS
from streamlearn.clock import Clock
from streamlearn.errors import ArchiveError
from streamlearn.events import ExampleRecord
from streamlearn.learning import ModelSpec
from streamlearn.snapshots.base import SnapshotStore
from streamlearn.training import Training, TrainingPolicy

_ARCHIVE_ONLY = {"event_at", "kafka_partition", "kafka_offset", "kafka_timestamp", "dt", "hour"}


@dataclass(frozen=True)
class Backfilled:
    examples: int
    versions: list[int]
    offsets: dict[int, int]


def cut(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> dict[int, int]:
    """Per partition, the offset of the last archived example whose day is in the period."""
    rows = con.execute(
        "SELECT kafka_partition, max(kafka_offset) FROM examples"
        " WHERE dt BETWEEN ? AND ? GROUP BY kafka_partition",
        [start, end],
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def _within(upto: dict[int, int]) -> str:
    """From the period's first day, up to each partition's cut (integers only: no injection)."""
    cuts = " OR ".join(
        f"(kafka_partition = {int(p)} AND kafka_offset <= {int(o)})" for p, o in upto.items()
    )
    return f"dt >= ? AND ({cuts})"


def examples(
    con: duckdb.DuckDBPyConnection, start: dt.date, upto: dict[int, int]
) -> Iterator[tuple[ExampleRecord, int, int]]:
    """(example, partition, offset) in the topic's order, up to each partition's cut."""
    if not upto:
        return
    # Each partition in offset order (as the trainer reads it), the partitions interleaved by
    # time: by the newest Kafka timestamp of the partition so far, which never goes back.
    result = con.execute(
        "SELECT * EXCLUDE (seen) FROM (SELECT *, max(kafka_timestamp) OVER (PARTITION BY"
        " kafka_partition ORDER BY kafka_offset ROWS UNBOUNDED PRECEDING) AS seen"
        f" FROM examples WHERE {_within(upto)}) ORDER BY seen, kafka_partition, kafka_offset",
        [start],
    )
    yield from decoded(result)


def decoded(
    result: duckdb.DuckDBPyConnection,
) -> Iterator[tuple[ExampleRecord, int, int]]:
    """(example, partition, offset) of each row of a query over the archived examples, as the
    trainer decodes the topic's records (the same types, so the same features)."""
    columns = [d[0] for d in result.description]
    json_columns = SPECS["examples"].json_columns
    while batch := result.fetchmany(10_000):
        for values in batch:
            row: dict[str, Any] = dict(zip(columns, values, strict=True))
            partition, offset = row["kafka_partition"], row["kafka_offset"]
            fields = {k: v for k, v in row.items() if k not in _ARCHIVE_ONLY}
            for c in json_columns:
                fields[c] = orjson.loads(fields[c])
            yield msgspec.convert(fields, ExampleRecord), partition, offset


def backfill(
    con: duckdb.DuckDBPyConnection,
    spec: ModelSpec,
    store: SnapshotStore,
    policy: TrainingPolicy,
    clock: Clock,
    start: dt.date,
    end: dt.date,
    progress: Callable[[int, int], None] = lambda done, total: None,
    every: int = 50_000,
) -> Backfilled:
    """Learn the period's archived examples as a new lineage of ``spec``, with a snapshot every
    ``every`` examples and one at the end; ``progress(done, total)`` as it goes."""
    if store.latest_version(spec.name) is not None:
        raise ArchiveError(
            f"{spec.name} has snapshots already: a backfill starts a new lineage (name a new "
            "model, a challenger say, or delete this one's versions)"
        )
    upto = cut(con, start, end)
    if not upto:
        raise ArchiveError(f"no archived example from {start} to {end}")
    counted = con.execute(f"SELECT count(*) FROM examples WHERE {_within(upto)}", [start])
    total = int(counted.fetchall()[0][0])
    training = Training(spec, clock, policy)
    versions: list[int] = []
    done = 0

    def checkpoint() -> None:
        version = store.next_version(spec.name)
        store.put(training.snapshot(version))
        training.checkpointed(version)
        versions.append(version)

    for example, partition, offset in examples(con, start, upto):
        training.learn(example, partition, offset)
        done += 1
        if done % every == 0:
            checkpoint()
        if done % 1000 == 0:
            progress(done, total)
    # Every partition cut, even where its last records were not learned (a correction
    # ignored): the lineage covers the archive up to there.
    for partition, offset in upto.items():
        training.skip(partition, offset)
    checkpoint()
    progress(done, total)
    return Backfilled(done, versions, dict(training.offsets))
