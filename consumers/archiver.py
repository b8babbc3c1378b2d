"""The archiver process: the event topics as immutable Parquet in the object store.

Reads recommendations, outcomes, labeled examples and dead letters (committed records only) and
writes each topic partition's records in rolls, as :mod:`streamlearn.archive` lays out: a marker,
the roll's files, the consumer's commit, then the marker's removal. A roll whose marker is found
at the committed offset when a partition is assigned was cut short by a crash: it is read and
written again, to the same names with the same bytes, before anything after it.

Run: ``python -m consumers.archiver``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import obstore
from confluent_kafka import Consumer, Message, TopicPartition
from obstore.exceptions import GenericError
from obstore.store import from_url
from prometheus_client import Counter

from consumers.process import KafkaProcess
from streamlearn.archive import PREFIX, SPECS, Roll, Table, marker, parse_marker, tables
from streamlearn.errors import InvalidEventError
from streamlearn.events import parse
from streamlearn.faults import failpoint
from streamlearn.settings import Settings

log = logging.getLogger("streamlearn.archiver")

ROWS = Counter("streamlearn_archive_rows", "Rows written to the event archive", ["table"])
FILES = Counter("streamlearn_archive_files", "Parquet files written to the archive", ["table"])

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """A store that is away (a network or disk error), not a call that can never succeed."""
    return isinstance(exc, GenericError | OSError)


class Archiver(KafkaProcess):
    name = "archiver"

    def __init__(self, settings: Settings) -> None:
        # A crashed archiver's partitions move on after 10 s, not librdkafka's 45.
        super().__init__(settings, **{"session.timeout.ms": 10_000})
        self.policy = settings.archive
        self.tables: dict[str, Table] = {settings.topic(t): t for t in tables()}
        url = settings.store_url
        if url.startswith("file://"):
            Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        self.store = from_url(url, **settings.archive_options)
        self.rolls: dict[tuple[str, int], Roll] = {}
        # A roll a crash cut short, to be written again: (topic, partition) -> its last offset.
        self.redo: dict[tuple[str, int], int] = {}

    def metrics_port(self) -> int:
        return self.policy.metrics_port

    def run(self) -> None:
        self.consumer.subscribe(
            list(self.tables), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self.stopping:
                for msg in self.consume(1000, timeout=0.2):
                    self._handle(msg)
                now = time.monotonic()
                for key, roll in list(self.rolls.items()):
                    if key not in self.redo and roll.full(self.policy, now):
                        self._write(key)
            for key in list(self.rolls):
                if key not in self.redo:
                    self._write(key)
        finally:
            self.consumer.close()

    def _handle(self, msg: Message) -> None:
        topic, p, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and p is not None and offset is not None
        table = self.tables[topic]
        spec = SPECS[table]
        value = msg.value() or b""
        key = (topic, p)
        roll = self.rolls.get(key)
        if roll is None:
            roll = self.rolls[key] = Roll(table, p, offset, time.monotonic())
        try:
            event = parse(spec.model, value, self.settings.max_record_bytes)
        except InvalidEventError:
            row = None  # the joiner and trainer put it in the dead letters, which are archived
        else:
            _, ms = msg.timestamp()
            row = spec.row(event, p, offset, ms if ms > 0 else None)
        roll.add(row, offset, len(value))
        if key in self.redo and offset >= self.redo[key]:
            del self.redo[key]  # the roll again, to its last offset: the same files
            self._write(key)
        elif key not in self.redo and len(roll.rows) >= self.policy.roll_rows:
            self._write(key)

    def _write(self, key: tuple[str, int]) -> None:
        """Make one roll durable, then commit past it."""
        roll = self.rolls.pop(key)
        topic, p = key
        done = marker(roll.table, p, roll.first, roll.last)
        self._put(done, b"")
        files = 0
        for path, data in roll.files():
            self._put(path, data)
            files += 1
        failpoint("archiver.before_commit")
        self.consumer.commit(offsets=[TopicPartition(topic, p, roll.last + 1)], asynchronous=False)
        self._retrying(lambda: obstore.delete(self.store, done))
        ROWS.labels(roll.table).inc(len(roll.rows))
        FILES.labels(roll.table).inc(files)
        log.info(
            "archived %s[%d] %d-%d: %d rows in %d files",
            topic,
            p,
            roll.first,
            roll.last,
            len(roll.rows),
            files,
        )

    def _put(self, path: str, data: bytes) -> None:
        self._retrying(lambda: obstore.put(self.store, path, data))

    def _retrying(self, call: Callable[[], T]) -> T:
        """An object-store call, again while the store is away; the offsets wait for it."""
        return self.patiently(call, away=_transient, what="the object store")

    # ---- rebalances -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        committed = consumer.committed(assigned, timeout=30)
        for tp in committed:
            table = self.tables[tp.topic]
            start = tp.offset  # negative when nothing was ever committed
            prefix = f"{PREFIX}/_rolls/{table}/{tp.partition}/"
            for path in self._retrying(partial(self._listed, prefix)):
                first, last = parse_marker(path)
                if start >= 0 and last < start:
                    # Committed, and the crash came before the marker was cleared: done.
                    self._retrying(partial(obstore.delete, self.store, path))
                    continue
                # The roll starting where reading resumes: the same records, again.
                self.redo[(tp.topic, tp.partition)] = last
                log.warning(
                    "%s[%d] %d-%d was cut short by a crash: writing it again",
                    tp.topic,
                    tp.partition,
                    first,
                    last,
                )

    def _listed(self, prefix: str) -> list[str]:
        return [obj["path"] for batch in obstore.list(self.store, prefix) for obj in batch]

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        # Still a member: write what was read, and commit it, before another takes over.
        for tp in revoked:
            key = (tp.topic, tp.partition)
            if key in self.rolls and key not in self.redo:
                self._write(key)
            self.rolls.pop(key, None)
            self.redo.pop(key, None)


if __name__ == "__main__":
    Archiver.main()
