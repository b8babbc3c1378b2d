"""One declaration per topic, and their idempotent creation.

Inputs are keyed by ``user_id`` and have the same partition count, so a user's recommendations
and outcomes land on the same partition number and the joiner's state for them stays local. The
joiner's repartition topics (where it forwards records a producer placed elsewhere) and its
state changelog have that count too: partition ``p``'s state lives in changelog partition ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from pydantic import BaseModel
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from streamlearn.alerting import Alert
from streamlearn.errors import InfraError
from streamlearn.events import (
    DeadLetter,
    JoinReport,
    LabeledExample,
    Outcome,
    Recommendation,
    Slate,
)
from streamlearn.settings import Settings

DAY_MS = 24 * 3600 * 1000
# The topics the joiner reads or keeps its state in: one partition count for all.
JOIN_ROLES = (
    "recommendations",
    "outcomes",
    "recommendations_repartition",
    "outcomes_repartition",
    "joiner_state",
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: type[BaseModel] | None
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def declared(settings: Settings) -> dict[str, TopicSpec]:
    """Every topic streamlearn uses, by role."""
    n = settings.partitions
    week = {"retention.ms": str(7 * DAY_MS)}
    return {
        "recommendations": TopicSpec(
            settings.topic("recommendations"), "user_id", Recommendation, n, week
        ),
        "outcomes": TopicSpec(settings.topic("outcomes"), "user_id", Outcome, n, week),
        "examples": TopicSpec(settings.topic("examples"), "user_id", LabeledExample, n, week),
        # Each recommendation once its window has closed, every slot labeled (the join's).
        "slates": TopicSpec(settings.topic("slates"), "user_id", Slate, n, week),
        "dead_letters": TopicSpec(
            settings.topic("dead_letters"),
            "source topic",
            DeadLetter,
            1,
            {"retention.ms": str(30 * DAY_MS)},
        ),
        "joiner_stats": TopicSpec(settings.topic("joiner_stats"), "worker", JoinReport, 1, week),
        "alerts": TopicSpec(
            settings.topic("alerts"), "dedup key", Alert, 1, {"retention.ms": str(30 * DAY_MS)}
        ),
        # Input records another joiner found on the wrong partition, at their user's partition
        # (written in the joiner's transactions; the co-partitioned inputs' count).
        "recommendations_repartition": TopicSpec(
            settings.topic("recommendations_repartition"), "user_id", Recommendation, n, week
        ),
        "outcomes_repartition": TopicSpec(
            settings.topic("outcomes_repartition"), "user_id", Outcome, n, week
        ),
        # The join state's changes, written in the joiner's transactions.
        "joiner_state": TopicSpec(
            settings.topic("joiner_state"),
            "state key",
            None,
            n,
            {"cleanup.policy": "compact"},
        ),
    }


def _partition_counts(admin: AdminClient, settings: Settings, timeout: float) -> dict[str, int]:
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise InfraError(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from exc
    return {name: len(t.partitions) for name, t in topics.items()}


def _settle(futures: dict[str, Any], verb: str, harmless: int) -> list[str]:
    """Wait for per-topic admin futures; returns the names done, ignoring the harmless error."""
    done = []
    for name, future in futures.items():
        try:
            future.result()
            done.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != harmless:
                raise InfraError(f"could not {verb} topic {name}: {exc}") from exc
    return done


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the declared topics that do not exist yet; returns the names created."""
    admin = AdminClient(client_config(settings))
    existing = _partition_counts(admin, settings, timeout)
    # The join's topics take the count of the recommendations already there, as Kafka Streams
    # sizes a repartition topic by its source: one made before a change of PARTITIONS stays
    # co-partitioned with the topics added since.
    joined = existing.get(settings.topic("recommendations"), settings.partitions)
    wanted = [
        NewTopic(
            t.name,
            num_partitions=joined if role in JOIN_ROLES else t.partitions,
            replication_factor=1,
            config=t.config,
        )
        for role, t in declared(settings).items()
        if t.name not in existing
    ]
    if not wanted:
        return []
    futures = admin.create_topics(wanted, request_timeout=timeout)
    created = _settle(futures, "create", KafkaError.TOPIC_ALREADY_EXISTS)
    _until_visible(admin, settings, {t.topic: t.num_partitions for t in wanted}, timeout)
    return created


def _until_visible(
    admin: AdminClient, settings: Settings, counts: dict[str, int], timeout: float
) -> None:
    """Wait until the broker's metadata shows the topics with their partitions. A creation
    returns once the controller has the topics; with KRaft the brokers learn of them a moment
    later, and a process started meanwhile (a joiner checking co-partitioning) would find them
    missing. Kafka Streams waits so for the internal topics it creates."""

    def shown() -> bool:
        now = _partition_counts(admin, settings, timeout)
        return all(now.get(name) == n for name, n in counts.items())

    waiting = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        wait=wait_fixed(0.1),
        stop=stop_after_delay(timeout),
        retry_error_callback=lambda _: False,
    )
    if not waiting(shown):
        raise InfraError(f"topics created but not in the broker's metadata after {timeout} s")


def delete_namespace(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete every topic under ``settings.topic_prefix`` (internal ones too); returns their names.

    For throwaway namespaces (tests, benches): with an empty prefix it refuses, so that it can
    never delete a shared broker's topics.
    """
    if not settings.topic_prefix:
        raise InfraError("refusing to delete topics without a topic prefix")
    admin = AdminClient(client_config(settings))
    names = sorted(
        t
        for t in _partition_counts(admin, settings, timeout)
        if t.startswith(settings.topic_prefix)
    )
    if not names:
        return []
    futures = admin.delete_topics(names, operation_timeout=timeout)
    return _settle(futures, "delete", KafkaError.UNKNOWN_TOPIC_OR_PART)


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """What every Kafka client of streamlearn's starts from: the bootstrap servers and the
    configured ``kafka_options`` (security.protocol, sasl.*, ssl.*: whatever librdkafka
    takes), so that a secured cluster needs them set once."""
    return {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_options, **extra}


def producer_config(settings: Settings, **extra: object) -> dict[str, object]:
    """confluent-kafka producer settings shared by every streamlearn producer.

    ``murmur2_random`` is the Java client's partitioner (the one most storefront producers use):
    without it confluent-kafka hashes keys with CRC32, and a user's recommendations sent from
    Java and outcomes sent from here could land on different partitions.
    """
    return client_config(
        settings,
        **{"partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5, **extra},
    )


def consumer_config(settings: Settings, group: str, **extra: object) -> dict[str, object]:
    return client_config(
        settings,
        **{
            "group.id": f"{settings.topic_prefix}{group}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Only what the joiner's transactions committed: never an example it later aborted.
            "isolation.level": "read_committed",
            **extra,
        },
    )


def end_offsets(client: Any, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The high watermark of every partition of ``topic``, read with a confluent ``Consumer``."""
    meta = client.list_topics(topic, timeout=timeout).topics[topic]
    return {
        p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
        for p in meta.partitions
    }
