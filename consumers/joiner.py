"""The joiner process (faust-streaming): wiring only; the join itself is streamlearn.joining.

One agent reads recommendations, outcomes and wall-clock ticks, which are co-partitioned, so the
state it writes while handling partition ``p`` goes to changelog partition ``p`` and every
partition's state stays with its worker. With ``exactly_once`` each input record, the state
changes it causes and the examples it emits commit in one Kafka transaction.

Run: ``python -m consumers.joiner``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
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

datadir = os.path.join(
    os.environ.get("STREAMLEARN_HOME", os.path.expanduser("~/.cache/streamlearn")),
    "faust",
    joiner_app_id(settings),
)
os.makedirs(datadir, exist_ok=True)

app = faust.App(
    joiner_app_id(settings),
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="memory://",
    processing_guarantee="exactly_once" if settings.exactly_once else "at_least_once",
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    # The table's keys are str: json brings them back as str after a changelog recovery.
    key_serializer="json",
    value_serializer="json",
    datadir=datadir,
)

raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(names["recommendations"], names["outcomes"], names["joiner_ticks"], **raw)
examples = app.topic(names["examples"], partitions=settings.partitions, **raw)
dead_letters = app.topic(names["dead_letters"], partitions=1, **raw)
state = app.Table("join-state", partitions=settings.partitions)

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


@app.agent(source)
async def join(stream: Any) -> None:
    async for event in stream.events():
        msg = event.message
        try:
            out = _handle(msg.topic, msg.partition, event.value)
        except InvalidEventError as exc:
            letter = DeadLetter.of(
                str(exc), msg.topic, msg.partition, msg.offset, event.key, event.value, time.time()
            )
            await dead_letters.send(key=msg.topic.encode(), value=letter.model_dump_json().encode())
            continue
        for example in out:
            await examples.send(
                key=example.user_id.encode(), value=example.model_dump_json().encode()
            )


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
