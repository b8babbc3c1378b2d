"""Producers that do not partition as the join does, against several joiners on the real broker.

Recommendations come as the README asks (keyed by user, the Java client's murmur2); their
clicks come from services that place records their own way: librdkafka's default
``consistent_random`` (CRC32), Go's sarama (FNV-1a, librdkafka's ``fnv1a`` is the same),
round-robin without a key, and keyed by session. One more group has its recommendations
misplaced instead. Every click naming its recommendation must become exactly one positive.
"""

from __future__ import annotations

import collections
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from streamlearn.events import JoinReport
from streamlearn.partitioning import crc32_partition, guess, join_partition, sarama_partition
from streamlearn.settings import Settings
from tests.conftest import Processes, configure, examples, read_topic, wait_until
from topics import JOIN_ROLES, client_config, delete_namespace, ensure_topics, producer_config

pytestmark = pytest.mark.integration

PARTITIONS = 6
PER_GROUP = 30
# How the clicks (or, for the last, the recommendations) of each group are placed.
GROUPS = ("consistent_random", "fnv1a", "round-robin", "session-key", "recommendations-crc32")


def latest_reports(s: Settings) -> dict[str, JoinReport]:
    raw = read_topic(s.kafka_bootstrap, s.topic("joiner_stats"))
    latest: dict[str, JoinReport] = {}
    for _, _, v in raw:
        r = JoinReport.model_validate_json(v)
        latest[r.worker] = r
    return latest


def every_worker_owns_partitions(s: Settings, workers: int) -> bool:
    """The group has settled: ``workers`` joiners each report a share of the partitions (a
    worker that left, or the same one before a rebalance, may have reported others before)."""
    recent = [r for r in latest_reports(s).values() if r.at > time.time() - 3]
    owned = [set(r.partitions) for r in recent if r.partitions]
    union = set().union(*owned) if owned else set()
    return len(owned) == workers and union == set(range(PARTITIONS))


class Placed:
    """A producer for each way of placing records, remembering where each one landed."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.producers = {
            name: Producer(producer_config(s, partitioner=name))
            for name in ("murmur2_random", "consistent_random", "fnv1a")
        }
        # topic, user, key, partition, and how it was placed
        self.landed: list[tuple[str, str, bytes | None, int, str]] = []
        self.turn = 0

    def send(self, topic: str, user: str, body: dict[str, object], how: str) -> None:
        key: bytes | None = user.encode()
        partition = -1  # the producer's partitioner decides
        partitioner = "murmur2_random"
        if how in ("consistent_random", "fnv1a"):
            partitioner = how
        elif how == "round-robin":
            key, partition = None, self.turn % PARTITIONS
            self.turn += 1
        elif how == "session-key":
            key = f"session-{uuid.uuid4().hex[:8]}".encode()

        def delivered(err: object, msg: object) -> None:
            assert err is None, err
            p = msg.partition()  # type: ignore[attr-defined]
            self.landed.append((topic, user, key, p, how))

        self.producers[partitioner].produce(
            topic, orjson.dumps(body), key, partition=partition, on_delivery=delivered
        )

    def flush(self) -> None:
        for p in self.producers.values():
            p.flush(30)


def run_with_joiners(processes: Processes, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS=str(PARTITIONS),
        STREAMLEARN_ATTRIBUTION_WINDOW_S="4",
        STREAMLEARN_ALLOWED_LATENESS_S="0.5",
        STREAMLEARN_IDLE_TIMEOUT_S="2",
        STREAMLEARN_JOINER_STATS_S="1",
        STREAMLEARN_JOINER_REPARTITION_PURGE_S="1",
        STREAMLEARN_JOINER_METRICS_PORT="0",
    )
    for n in range(workers):
        processes.start(f"joiner-{n}", "-m", "consumers.joiner")
    wait_until(lambda: every_worker_owns_partitions(s, workers), f"{workers} joiners to settle")

    placed = Placed(s)
    recs_topic, outcomes_topic = s.topic("recommendations"), s.topic("outcomes")
    t = time.time()
    clicked: set[str] = set()
    impressions: set[str] = set()
    for g, how in enumerate(GROUPS):
        for i in range(PER_GROUP):
            rid, user = f"{g}-{i}", f"user-{g}-{i}"
            items = [f"item-{i}-a", f"item-{i}-b"]
            rec = {
                "recommendation_id": rid,
                "user_id": user,
                "event_time": t,
                "items": [
                    {"item_id": item, "position": n, "features": {"x": 1.0}}
                    for n, item in enumerate(items)
                ],
            }
            click = {
                "outcome_id": f"o-{rid}",
                "recommendation_id": rid,
                "user_id": user,
                "item_id": items[0],
                "kind": "click",
                "event_time": t + 1,
            }
            misplaced_rec = how == "recommendations-crc32"
            placed.send(
                recs_topic, user, rec, "consistent_random" if misplaced_rec else "as-readme"
            )
            placed.send(outcomes_topic, user, click, "as-readme" if misplaced_rec else how)
            impressions |= {f"{rid}:{item}" for item in items}
            clicked.add(f"{rid}:{items[0]}")
    placed.flush()

    # The producers placed records as their libraries do (which is what the guesses assume),
    # and most of them somewhere else than the join needs.
    expected = {"consistent_random": crc32_partition, "fnv1a": sarama_partition}
    for _, user, key, p, how in placed.landed:
        if how in expected:
            assert key is not None and p == expected[how](key, PARTITIONS)
        elif how == "as-readme":
            assert p == join_partition(user, PARTITIONS)
    misplaced = [
        (topic, user, key, p)
        for topic, user, key, p, _ in placed.landed
        if p != join_partition(user, PARTITIONS)
    ]
    assert len(misplaced) > len(GROUPS) * PER_GROUP / 2

    wait_until(lambda: len(examples(s)) >= len(impressions), "every impression joined")
    time.sleep(3)  # a wrong extra example would have time to show
    got = examples(s)
    counts = collections.Counter(e.example_id for e in got)
    assert set(counts) == impressions
    assert max(counts.values()) == 1, counts.most_common(3)
    assert {e.example_id for e in got if e.label} == clicked
    for p, _, value in read_topic(s.kafka_bootstrap, s.topic("examples")):
        assert join_partition(orjson.loads(value)["user_id"], PARTITIONS) == p  # its user's

    def forwarded_counted() -> bool:
        latest = latest_reports(s).values()
        counted: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for r in latest:
            for input, guesses in r.forwarded.items():
                counted[input].update(guesses)
        want: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for topic, user, key, p in misplaced:
            input = "recommendations" if topic == recs_topic else "outcomes"
            want[input][guess(key, user, p, PARTITIONS)] += 1
        unmatched = sum(r.counters.get("unmatched_outcomes", 0) for r in latest)
        return counted == want and unmatched == 0

    wait_until(forwarded_counted, "the forwarded records counted by guess, none unmatched")

    def purged() -> bool:
        """What was forwarded and joined is deleted from the repartition topics (Kafka
        Streams' purge): they keep no copy of what was joined."""
        roles = ("recommendations_repartition", "outcomes_repartition")
        return not any(read_topic(s.kafka_bootstrap, s.topic(role)) for role in roles)

    wait_until(purged, "the repartition topics purged of what was joined")


def test_two_joiners_join_every_click_however_it_was_partitioned(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_with_joiners(processes, monkeypatch, 2)


def test_three_joiners_join_every_click_however_it_was_partitioned(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_with_joiners(processes, monkeypatch, 3)


def test_the_joins_topics_take_the_partition_count_of_the_recommendations_there(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Topics made before PARTITIONS changed: the repartition topics added since follow the
    recommendations' count, so the join stays co-partitioned; a joiner facing topics of
    different counts refuses to start and says which."""
    monkeypatch.setenv("STREAMLEARN_PARTITIONS", "4")
    for key, value in processes.env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    admin = AdminClient(client_config(s))
    made = admin.create_topics(
        [NewTopic(s.topic(r), num_partitions=4) for r in ("recommendations", "outcomes")]
    )
    for future in made.values():
        future.result()
    s = configure(processes, monkeypatch, STREAMLEARN_PARTITIONS="2")
    counts = {
        name: len(t.partitions)
        for name, t in admin.list_topics(timeout=30).topics.items()
        if name.startswith(s.topic_prefix)
    }
    for role in JOIN_ROLES:
        assert counts[s.topic(role)] == 4, counts
    assert counts[s.topic("examples")] == 2  # not the join's: as configured

    grown = admin.create_partitions([NewPartitions(s.topic("outcomes_repartition"), 6)])
    for future in grown.values():
        future.result()
    joiner = processes.start("joiner", "-m", "consumers.joiner")
    assert joiner.wait(120) != 0
    assert "streamlearn joiner: the join needs topics" in processes.log("joiner")
    assert "Traceback" not in processes.log("joiner")
    assert f"'{s.topic('outcomes_repartition')}': 6" in processes.log("joiner")


def test_topics_just_created_are_in_the_brokers_metadata(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner started right after the topics are made checks them in the broker's metadata.
    With KRaft the broker learned of new topics a moment after their creation returned, and
    the test above found one missing about one run in seven; ensure_topics now waits."""
    s = configure(processes, monkeypatch)
    for attempt in range(5):
        fresh = s.model_copy(update={"topic_prefix": f"{s.topic_prefix}{attempt}."})
        names = ensure_topics(fresh)
        shown = AdminClient(client_config(fresh)).list_topics(timeout=30).topics
        assert names and all(shown.get(n) is not None and shown[n].partitions for n in names)
        delete_namespace(fresh)
