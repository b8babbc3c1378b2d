"""Join throughput through the real broker, next to the raw consume rate, and state memory.

1. Produces a backlog of N recommendations (5 items each, event times 10 ms apart) and outcomes
   for about one impression in ten into fresh topics.
2. Raw baseline: one confluent-kafka consumer reads the recommendations topic end to end.
3. Starts one joiner process on the backlog and counts committed examples as they appear; the
   rate is taken between 10% and 90% of the examples, so the joiner's start-up and the last windows
   (closed by the idle fallback) do not count.
4. The same with half the outcomes on a partition other than their user's, as a producer with
   another partitioner would place them (``impressions_per_s_misrouted``: the cost of the
   joiner's detour through the repartition topic), and with half the recommendations so placed
   (``impressions_per_s_recs_misrouted``: they are most of the records, so the worst case).
   Each run has fresh topics.
5. In this process: the pure join logic on the same events (where the time goes), and the memory
   of the state per pending impression (tracemalloc over open windows).

Prints figures; the last line is one JSON object. Run: ``python bench/join.py [N]`` after
``make infra-up``.
"""

from __future__ import annotations

import atexit
import os
import random
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

from common import print_figures, raw_consume_per_s
from confluent_kafka import Consumer, Producer

from streamlearn.clock import ManualClock
from streamlearn.events import Outcome, Recommendation
from streamlearn.joining import Joiner, JoinPolicy, JoinState
from streamlearn.partitioning import join_partition
from streamlearn.settings import Settings
from streamlearn.simulation import Storefront
from topics import delete_namespace, ensure_topics, producer_config

os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")  # a bench is development

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 5.0


def events(n: int) -> tuple[list[Recommendation], list[Outcome]]:
    shop = Storefront(traffic_seed=3, mean_delay_s=1.0)
    base = time.time() - n * 0.01 - 3600
    recs, outs = [], []
    for i in range(n):
        rec, outcomes = shop.recommend(base + i * 0.01)
        recs.append(rec)
        outs.extend(o for o in outcomes if o.kind == "click")
    return recs, outs


def count_examples(s: Settings, want: int, timeout: float) -> list[float]:
    """Arrival times of committed examples until ``want`` have arrived."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([s.topic("examples")])
    times: list[float] = []
    deadline = time.monotonic() + timeout
    while len(times) < want and time.monotonic() < deadline:
        for m in c.consume(10_000, timeout=0.5):
            if not m.error():
                times.append(time.perf_counter())
    c.close()
    return times


def pure_join(recs: list[Recommendation], outs: list[Outcome]) -> float:
    clock = ManualClock(recs[-1].event_time)
    j = Joiner(JoinPolicy(window_s=WINDOW_S, allowed_lateness_s=0.0), {}, clock)
    merged = sorted(
        [(r.event_time, 0, r) for r in recs] + [(o.event_time, 1, o) for o in outs],
        key=lambda e: (e[0], e[1]),
    )
    start = time.perf_counter()
    for _, kind, ev in merged:
        if kind == 0:
            j.on_recommendation(ev, 0)  # type: ignore[arg-type]
        else:
            j.on_outcome(ev, 0)  # type: ignore[arg-type]
    return j.stats.impressions / (time.perf_counter() - start)


def bytes_per_pending(recs: list[Recommendation]) -> float:
    state = JoinState()
    j = Joiner(JoinPolicy(window_s=1e9), state, ManualClock(0.0))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for rec in recs:
        j.on_recommendation(rec, 0)
    state.drain()  # as each commit does
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / sum(len(r.items) for r in recs)


def namespace() -> Settings:
    """Fresh topics for one run, deleted when the bench ends."""
    os.environ["STREAMLEARN_TOPIC_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}."
    s = Settings()
    ensure_topics(s)
    atexit.register(delete_namespace, s)  # a bench's topics are throwaway
    return s


def produce(
    s: Settings, recs: list[Recommendation], outs: list[Outcome], misroute: str | None
) -> None:
    """The backlog; with ``misroute``, half of those records on a partition not their user's."""
    producer = Producer(producer_config(s, **{"linger.ms": 20}))
    coin = random.Random(1)
    records = [("recommendations", r) for r in recs]
    records += [("outcomes", o) for o in random.Random(0).sample(outs, len(outs))]
    for role, event in records:
        partition = -1  # the producer's partitioner: the join's own
        if role == misroute and coin.random() < 0.5:
            partition = (join_partition(event.user_id, s.partitions) + 1) % s.partitions
        topic = s.topic("recommendations" if role == "recommendations" else "outcomes")
        producer.produce(
            topic, event.model_dump_json().encode(), event.user_id.encode(), partition=partition
        )
        producer.poll(0)
    producer.flush(60)


def joined_rate(s: Settings, impressions: int) -> tuple[float, int]:
    """Impressions joined per second by one joiner process on the backlog, and how many."""
    joiner = subprocess.Popen(
        [sys.executable, "-m", "consumers.joiner"],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        arrivals = count_examples(s, impressions, timeout=600)
    finally:
        joiner.terminate()
        joiner.wait(30)
    lo, hi = arrivals[len(arrivals) // 10], arrivals[(len(arrivals) * 9) // 10]
    return (0.8 * len(arrivals)) / (hi - lo), len(arrivals)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    os.environ.update(
        {
            "STREAMLEARN_ATTRIBUTION_WINDOW_S": str(WINDOW_S),
            "STREAMLEARN_ALLOWED_LATENESS_S": "0",
            "STREAMLEARN_IDLE_TIMEOUT_S": "2",
            "STREAMLEARN_JOINER_METRICS_PORT": "0",
            "LOG_LEVEL": "warn",
        }
    )
    recs, outs = events(n)
    impressions = sum(len(r.items) for r in recs)
    s = namespace()
    produce(s, recs, outs, None)
    raw_per_s = raw_consume_per_s(s, s.topic("recommendations"), n)
    joined_per_s, seen = joined_rate(s, impressions)
    rates = {}
    for misroute in ("outcomes", "recommendations"):
        s = namespace()
        produce(s, recs, outs, misroute)
        rates[misroute], _ = joined_rate(s, impressions)

    figures = {
        "recommendations": n,
        "impressions": impressions,
        "examples_seen": seen,
        "impressions_per_s": round(joined_per_s),
        "impressions_per_s_misrouted": round(rates["outcomes"]),
        "ratio_misrouted_to_in_place": round(rates["outcomes"] / joined_per_s, 2),
        "impressions_per_s_recs_misrouted": round(rates["recommendations"]),
        "ratio_recs_misrouted_to_in_place": round(rates["recommendations"] / joined_per_s, 2),
        "raw_consume_per_s": round(raw_per_s),
        "raw_consume_impressions_per_s": round(raw_per_s * impressions / n),
        "ratio_raw_to_joined": round(raw_per_s * impressions / n / joined_per_s, 1),
        "pure_join_impressions_per_s": round(pure_join(recs, outs)),
        "bytes_per_pending_impression": round(bytes_per_pending(recs[:5000])),
    }
    print_figures(figures)


if __name__ == "__main__":
    main()
