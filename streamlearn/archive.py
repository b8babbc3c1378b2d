"""The event archive: every record of the four event topics as immutable, Hive-partitioned Parquet.

Layout, in the namespace the snapshots use in the object store (``ARCHIVE_URL``, then the topic
prefix: ``Settings.store_url``)::

    events/<table>/dt=<YYYY-MM-DD>/hour=<HH>/part-<partition>-<first offset>-<last offset>.parquet

with ``<table>`` one of ``recommendations``, ``outcomes``, ``examples``, ``dead_letters``, the
date and hour those of the event time in UTC (a dead letter's: when it failed), and the offsets
those of the *roll* the file belongs to (zero-padded, so names sort by offset). A roll is a run
of consecutive records of one topic partition, cut when it holds ``roll_rows`` rows or
``roll_bytes`` bytes of values, or ``roll_s`` seconds after its first record was read; its rows
go to one file per date and hour they fall in, all named after the roll.

Exactly once, as Kafka Connect's HDFS sink recovers its offsets from its own files: before a
roll's files are written, a marker ``events/_rolls/<table>/<partition>/<first>-<last>`` says the
roll is in progress; the files follow, then the consumer commits ``last + 1``, then the marker
goes. A crash anywhere in between leaves a marker at the committed offset, and the next owner of
the partition reads the same records again and writes the same roll again: the same names, the
same bytes (Parquet written with fixed settings is a function of its rows). Never a gap, never a
duplicate row.

Columns are typed from the event models: strings, ``DOUBLE`` times in seconds (exact, for replay)
plus an ``event_at`` ``TIMESTAMP`` for SQL, integers, booleans; nested values (features, the
slate's items) are JSON text, which DuckDB reads with ``->>`` and ``json_extract``. Every row
carries where it came from: ``kafka_partition``, ``kafka_offset``, ``kafka_timestamp``.
"""

from __future__ import annotations

import datetime as dt
import io
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from streamlearn.events import DeadLetter, LabeledExample, Outcome, Recommendation
from streamlearn.policy import Policy
from streamlearn.snapshots.objects import EVENTS_PREFIX

PREFIX = EVENTS_PREFIX
Table = Literal["recommendations", "outcomes", "examples", "dead_letters"]
TABLES: dict[Table, tuple[type[BaseModel], str]] = {
    # table -> (the event model, the field whose time places a row)
    "recommendations": (Recommendation, "event_time"),
    "outcomes": (Outcome, "event_time"),
    "examples": (LabeledExample, "recommendation_time"),
    "dead_letters": (DeadLetter, "failed_at"),
}
SOURCE_COLUMNS = [
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
]


class ArchivePolicy(Policy):
    """When the archiver cuts a roll of records into files."""

    FLAT: ClassVar[dict[str, str]] = {
        "roll_rows": "archive_roll_rows",
        "roll_bytes": "archive_roll_bytes",
        "roll_s": "archive_roll_s",
        "metrics_port": "archiver_metrics_port",
    }

    roll_rows: int = Field(200_000, ge=1, description="Rows of one partition per roll, at most.")
    roll_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Bytes of record values per roll, at most."
    )
    roll_s: float = Field(
        300.0, gt=0, description="Seconds from a roll's first record to its files, at most."
    )
    metrics_port: int = Field(
        9112, ge=0, le=65535, description="Prometheus /metrics of the archiver; 0 turns it off."
    )


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """The Parquet column type of a model field, and whether it holds JSON text."""
    if hasattr(annotation, "__metadata__"):  # Annotated[X, ...]: X
        return _arrow_type(annotation.__origin__)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _arrow_type(inner[0])
    if origin is Literal:
        value = get_args(annotation)[0]
        return (pa.int64() if isinstance(value, int) else pa.string()), False
    if origin in (dict, list):
        return pa.string(), True
    return {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}[
        annotation
    ], False


@dataclass(frozen=True)
class TableSpec:
    name: Table
    model: type[BaseModel]
    time_field: str
    schema: pa.Schema
    json_columns: frozenset[str]

    @classmethod
    def of(cls, name: Table) -> TableSpec:
        model, time_field = TABLES[name]
        fields, json_columns = [], set()
        for fname, info in model.model_fields.items():
            kind, is_json = _arrow_type(info.annotation)
            fields.append(pa.field(fname, kind))
            if is_json:
                json_columns.add(fname)
        fields.append(pa.field("event_at", pa.timestamp("us", tz="UTC"), nullable=False))
        return cls(
            name, model, time_field, pa.schema(fields + SOURCE_COLUMNS), frozenset(json_columns)
        )

    def row(
        self, event: BaseModel, partition: int, offset: int, timestamp_ms: int | None
    ) -> dict[str, Any]:
        row = event.model_dump(mode="json")
        for column in self.json_columns:
            # Keys in the record's own order: a model sums its features in that order, and a
            # replay from the archive must sum them as the trainer did (streamlearn.verification).
            row[column] = orjson.dumps(row[column]).decode()
        at = float(row[self.time_field])
        row["event_at"] = dt.datetime.fromtimestamp(at, dt.UTC)
        row["kafka_partition"] = partition
        row["kafka_offset"] = offset
        row["kafka_timestamp"] = (
            None if timestamp_ms is None else dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)
        )
        return row


SPECS: dict[Table, TableSpec] = {name: TableSpec.of(name) for name in TABLES}


def hive_dir(table: Table, event_at: dt.datetime) -> str:
    return f"{PREFIX}/{table}/dt={event_at:%Y-%m-%d}/hour={event_at:%H}"


def file_name(partition: int, first: int, last: int) -> str:
    return f"part-{partition}-{first:020d}-{last:020d}.parquet"


def marker(table: Table, partition: int, first: int, last: int) -> str:
    return f"{PREFIX}/_rolls/{table}/{partition}/{first:020d}-{last:020d}"


def parse_marker(path: str) -> tuple[int, int]:
    first, last = path.rsplit("/", 1)[-1].split("-")
    return int(first), int(last)


def parquet_bytes(schema: pa.Schema, rows: list[dict[str, Any]]) -> bytes:
    """The rows as one Parquet file, written with fixed settings: the same rows make the same
    bytes, which is what lets a roll be written again after a crash."""
    table = pa.Table.from_pylist(rows, schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", compression_level=3, write_statistics=True)
    return out.getvalue()


@dataclass
class Roll:
    """Consecutive records of one topic partition, on their way to files."""

    table: Table
    partition: int
    first: int
    opened_at: float  # monotonic seconds, when its first record was read
    last: int = -1
    value_bytes: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, Any] | None, offset: int, size: int) -> None:
        """A record at ``offset``; ``row`` is None for one that is not an event (it counts for
        the offsets, and is in the dead letters)."""
        if row is not None:
            self.rows.append(row)
        self.last = offset
        self.value_bytes += size

    def full(self, policy: ArchivePolicy, now: float) -> bool:
        return (
            len(self.rows) >= policy.roll_rows
            or self.value_bytes >= policy.roll_bytes
            or now - self.opened_at >= policy.roll_s
        )

    def files(self) -> Iterator[tuple[str, bytes]]:
        """(path, Parquet bytes) of each date and hour the roll's rows fall in."""
        spec = SPECS[self.table]
        buckets: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            buckets.setdefault(hive_dir(self.table, row["event_at"]), []).append(row)
        name = file_name(self.partition, self.first, self.last)
        for directory, rows in sorted(buckets.items()):
            yield f"{directory}/{name}", parquet_bytes(spec.schema, rows)


def tables() -> Iterable[Table]:
    return TABLES.keys()
