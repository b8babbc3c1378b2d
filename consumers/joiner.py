"""The joiner process (faust-streaming): wiring only; the join itself is streamlearn.joining.

One agent reads recommendations, outcomes and wall-clock ticks, which are co-partitioned, so the
state it writes while handling partition ``p`` goes to changelog partition ``p`` and every
partition's state stays with its worker. With ``exactly_once`` each input record's offset, the
state changes it causes and the examples it emits commit in one Kafka transaction.

faust picks the transaction of a send from the *destination* topic and partition, while it
commits input offsets in the transaction of the *source* partition; and a table writes its
changelog through a buffer outside any transaction. Either way an output can commit without the
offset of the record that caused it, and a SIGKILL then duplicates or loses labels (seen here,
and reported as faust-streaming issue 517). So every output of a record, table writes included,
is sent here explicitly in that record's own transaction.

Stopping is a crash, on purpose. faust's graceful stop commits the offsets of records it fetched
but never handed to the agent (seen here: a SIGTERM lost six recommendations; compare
faust-streaming issue 312). A process that simply exits leaves its open transactions to be
aborted by the next owner, which resumes from the last committed one: the path the SIGKILL test
proves exactly once. The short session timeout lets the group notice the exit quickly.

Run: ``python -m consumers.joiner``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import faust
from confluent_kafka import Producer
from prometheus_client import REGISTRY, start_http_server

from streamlearn.clock import SystemClock
from streamlearn.errors import InvalidEventError
from streamlearn.events import DeadLetter, LabeledExample, Outcome, Recommendation, parse
from streamlearn.joining import Joiner, JoinPolicy
from streamlearn.settings import get_settings
from streamlearn.telemetry import JoinCollector, report
from topics import declared, joiner_app_id, producer_config

log = logging.getLogger("streamlearn.joiner")

settings = get_settings()
spec = declared(settings)
names = {role: t.name for role, t in spec.items()}

# The memory store keeps nothing on disk that matters (state is rebuilt from the changelog);
# a directory per process lets several workers share a machine.
datadir = tempfile.mkdtemp(prefix=f"{joiner_app_id(settings)}-")

app = faust.App(
    joiner_app_id(settings),
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="memory://",
    processing_guarantee="exactly_once" if settings.exactly_once else "at_least_once",
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=10.0,
    broker_heartbeat_interval=2.0,
    # aiokafka sends at once by default: with a transactional producer per partition that meant
    # one tiny produce request per example (15% of the joiner's time in socket writes).
    producer_linger=0.005,
    web_enabled=False,
    # The table's keys are str: json brings them back as str after a changelog recovery.
    key_serializer="json",
    value_serializer="json",
    datadir=datadir,
)

raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(names["recommendations"], names["outcomes"], names["joiner_ticks"], **raw)
# Changelog writes of the current record, waiting to be sent in its transaction.
unsent_changelog: list[tuple[int | None, Any, Any]] = []


class TransactionalTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog writes are sent by the agent, in the record's transaction."""

    def on_key_set(self, key: Any, value: Any) -> None:
        self._queue(key, value)

    def on_key_del(self, key: Any) -> None:
        self._queue(key, None)

    def _queue(self, key: Any, value: Any) -> None:
        topic = self.changelog_topic
        raw_key, _ = topic.prepare_key(key, self.key_serializer)
        raw_value = None if value is None else topic.prepare_value(value, self.value_serializer)[0]
        # The partition of the record being processed: state stays co-partitioned with it.
        unsent_changelog.append((self.partition_for_key(key), raw_key, raw_value))


state: Any = app.tables.add(
    TransactionalTable(
        app, name="join-state", partitions=settings.partitions, beacon=app.tables.beacon
    )
)

joiner = Joiner(
    JoinPolicy(
        window_s=settings.attribution_window_s,
        allowed_lateness_s=settings.allowed_lateness_s,
        idle_timeout_s=settings.idle_timeout_s,
        early_grace_s=settings.early_outcome_grace_s,
        positive_kinds=frozenset(settings.positive_kinds),
        combine=settings.combine,
        late_policy=settings.late_policy,
        match_by_user_item=settings.match_by_user_item,
        dedup_retention_s=settings.dedup_retention_s,
    ),
    state,
    SystemClock(),
)
worker = f"{socket.gethostname()}-{os.getpid()}"

# Ticks are written outside any input record, so they cannot ride faust's per-partition
# transactions: a plain idempotent producer sends them.
tick_producer = Producer(producer_config(settings))


def _handle(topic: str, partition: int, value: bytes | None) -> list[LabeledExample]:
    limit = settings.max_record_bytes
    if topic == names["recommendations"]:
        return joiner.on_recommendation(parse(Recommendation, value, limit), partition)
    if topic == names["outcomes"]:
        return joiner.on_outcome(parse(Outcome, value, limit), partition)
    return joiner.on_tick(partition)


def active_partitions() -> set[int]:
    return {
        tp.partition
        for tp in app.assignor.assigned_actives()
        if tp.topic == names["recommendations"]
    }


def transaction_of(topic: str, partition: int) -> str | None:
    """The transaction in which faust commits this source partition's offsets."""
    if not app.in_transaction:
        return None
    return f"{app.conf.id}-{app.assignor.group_for_topic(topic)}-{partition}"


@app.agent(source)
async def join(stream: Any) -> None:
    changelog = state.changelog_topic.get_topic_name()
    async for event in stream.events():
        msg = event.message
        sends: list[tuple[str, Any, Any, int | None]] = []
        try:
            out = _handle(msg.topic, msg.partition, event.value)
        except InvalidEventError as exc:
            letter = DeadLetter.of(
                str(exc), msg.topic, msg.partition, msg.offset, event.key, event.value, time.time()
            )
            out = []
            sends.append((names["dead_letters"], msg.topic.encode(), _json(letter), 0))
        sends.extend((changelog, k, v, p) for p, k, v in unsent_changelog)
        unsent_changelog.clear()
        # Examples stay on the partition of the user they are about, as the inputs are.
        sends.extend((names["examples"], e.user_id.encode(), _json(e), msg.partition) for e in out)
        tid = transaction_of(msg.topic, msg.partition)
        for topic, key, value, partition in sends:
            await app.producer.send(topic, key, value, partition, None, None, transactional_id=tid)


def _json(model: Any) -> bytes:
    return bytes(model.model_dump_json().encode())


@app.task
async def exit_on_signal() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _exit_now, sig)


def _exit_now(sig: int) -> None:
    log.info("signal %d: exiting without faust's commit; open transactions will be aborted", sig)
    logging.shutdown()
    os._exit(0)


@app.timer(settings.joiner_tick_s)
async def tick() -> None:
    for partition in active_partitions():
        tick_producer.produce(names["joiner_ticks"], value=b"", partition=partition)
    tick_producer.poll(0)


@app.timer(settings.joiner_stats_s)
async def publish_stats() -> None:
    stats = report(joiner, worker, active_partitions())
    tick_producer.produce(
        names["joiner_stats"], key=worker.encode(), value=stats.model_dump_json().encode()
    )
    tick_producer.poll(0)
    log.info("join stats %s coverage=%s", stats.counters, stats.coverage)


@app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust types no async receiver
async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    joiner.forget_partitions()


def main() -> None:
    if settings.joiner_metrics_port:
        REGISTRY.register(JoinCollector(joiner, active_partitions))
        start_http_server(settings.joiner_metrics_port, addr="127.0.0.1")
    sys.argv = [
        sys.argv[0],
        "worker",
        "--without-web",
        "--loglevel",
        os.environ.get("LOG_LEVEL", "info"),
    ]
    app.main()


if __name__ == "__main__":
    main()
