"""End-to-end freshness: from a customer's action to the API serving a model that learned it.

The loop runs as in production, each stage its own process on the real broker and Redis: the
joiner, the trainer (the default model, checkpointing every ``CHECKPOINT_EVERY_S``, deltas
between whole snapshots) and the API. This process is the storefront: it produces
recommendation events at a steady rate and their outcomes when they happen, and notes when it
produced each impression's first outcome. It reads the examples topic (committed records only, as
the trainer does) to learn where each positive landed, and asks the API's ``/healthz`` every 10
ms which offsets the version it serves has learned. An outcome's freshness is the time from
producing it to the first answer of ``/healthz`` whose offsets include its positive example:
the customer acted, and the model answering requests has learned it.

Then the same with a model of a million weights (hashed features, 2^20 buckets, every one set):
its first checkpoint is whole (23 MB), the next ones deltas, and the API applies each delta to
the model it holds.

Run: ``python bench/freshness.py`` after ``make infra-up``. The last line is one JSON object.
"""

from __future__ import annotations

import atexit
import heapq
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import api_env, print_figures
from confluent_kafka import Consumer, Producer, TopicPartition

from streamlearn.clock import SystemClock
from streamlearn.events import LabeledExample, Outcome
from streamlearn.learning import ModelSpec
from streamlearn.settings import Settings
from streamlearn.simulation import Storefront
from streamlearn.snapshots import open_store
from streamlearn.training import Training
from topics import delete_namespace, ensure_topics, producer_config

os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")  # a bench is development

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
WARM_UP_S = 8.0  # the first outcomes wait for the first model and the first whole snapshot
DRAIN_S = 8.0
CHECKPOINT_EVERY_S = "0.5"
HASHED = {"STREAMLEARN_MODEL__ENCODING": "hash", "STREAMLEARN_MODEL__HASH_FEATURES": str(2**20)}


def million_weights(settings: Settings) -> None:
    """Version 1 of a hashed model with all 2^20 weights set: the trainer goes on from it."""
    t = Training(ModelSpec(encoding="hash", hash_features=2**20), SystemClock(), settings.training)
    weights = t.learner.model[-1]._weights
    for i in range(2**20):
        weights[i] = 0.001 * (i % 97)
    open_store(settings).put(t.snapshot(1))


class Watch:
    """Background readers: the examples topic (where each positive landed) and the API's
    ``/healthz`` (what the served version has learned, and when it said so)."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings, self.url = settings, url
        self.positives: dict[str, tuple[int, int]] = {}
        self.answers: list[tuple[float, dict[int, int]]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f) for f in (self._examples, self._health)]
        for thread in self.threads:
            thread.start()

    def _examples(self) -> None:
        s = self.settings
        c = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        topic = s.topic("examples")
        c.assign([TopicPartition(topic, p, 0) for p in range(s.partitions)])
        while not self.stop.is_set():
            for m in c.consume(1000, timeout=0.2):
                if m.error() or m.value() is None:
                    continue
                e = orjson.loads(m.value())
                if e.get("label") and not e.get("correction"):
                    self.positives.setdefault(e["example_id"], (m.partition(), m.offset()))
        c.close()

    def _health(self) -> None:
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while not self.stop.is_set():
                try:
                    body = client.get("/healthz").json()
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                offsets = {int(p): o for p, o in body.get("offsets", {}).items()}
                self.answers.append((time.time(), offsets))
                time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def storefront(settings: Settings, rate: float, seconds: float) -> tuple[dict[str, float], int]:
    """Recommendations at ``rate`` per second for ``seconds``, outcomes when due; the time each
    impression's first outcome was produced, and how many events (recommendations and
    outcomes) were produced."""
    shop = Storefront(
        settings.sim_users, settings.sim_items, settings.sim_slate_size, 7, traffic_seed=5
    )
    producer = Producer(producer_config(settings))
    recs_topic, outcomes_topic = settings.topic("recommendations"), settings.topic("outcomes")
    pending: list[tuple[float, int, Outcome]] = []
    first: dict[str, float] = {}
    seq = events = 0
    start = time.time()
    next_at = start
    while True:
        now = time.time()
        if now - start < seconds:
            while next_at <= now:
                rec, outcomes = shop.recommend(now)
                producer.produce(
                    recs_topic, key=rec.user_id.encode(), value=rec.model_dump_json().encode()
                )
                events += 1
                for o in outcomes:
                    seq += 1
                    heapq.heappush(pending, (o.event_time, seq, o))
                next_at += 1.0 / rate
        elif not pending or now - start > seconds + DRAIN_S:
            break
        while pending and pending[0][0] <= now:
            _, _, o = heapq.heappop(pending)
            producer.produce(
                outcomes_topic, key=o.user_id.encode(), value=o.model_dump_json().encode()
            )
            events += 1
            eid = LabeledExample.id_for(o.recommendation_id or "", o.item_id)
            first.setdefault(eid, time.time())
        producer.poll(0)
        time.sleep(max(0.0, min(0.005, next_at - time.time())))
    producer.flush(30)
    return first, events


def covered(
    answers: list[tuple[float, dict[int, int]]], after: float, at: tuple[int, int]
) -> float | None:
    """When the API first said, after ``after``, that it serves a version that learned ``at``."""
    partition, offset = at
    for t, offsets in answers:
        if t >= after and offsets.get(partition, 0) > offset:
            return t
    return None


def loop(rate: float, hashed: bool) -> dict[str, Any]:
    port = 18000 + int.from_bytes(os.urandom(2)) % 1000
    env = api_env(
        port,
        STREAMLEARN_CHECKPOINT_EVERY_S=CHECKPOINT_EVERY_S,
        STREAMLEARN_CHECKPOINT_EVERY_N=str(10**9),
        STREAMLEARN_TRAINER_METRICS_PORT="0",
        STREAMLEARN_JOINER_METRICS_PORT="0",
        **(HASHED if hashed else {}),
    )
    os.environ.update(env)
    settings = Settings()
    ensure_topics(settings)
    atexit.register(delete_namespace, settings)
    if hashed:
        million_weights(settings)
    logs = Path(tempfile.mkdtemp())
    procs = []
    for name, module in (
        ("joiner", "consumers.joiner"),
        ("trainer", "consumers.trainer"),
        ("api", "api"),
    ):
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        procs.append(
            subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stdout=out, stderr=out)
        )
    watch = Watch(settings, f"http://127.0.0.1:{port}")
    try:
        first, events = storefront(settings, rate, SECONDS)
        time.sleep(DRAIN_S)
    finally:
        watch.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    start = min(first.values(), default=time.time())
    marked = {e: t for e, t in first.items() if t - start >= WARM_UP_S and e in watch.positives}
    fresh = []
    for eid, produced in marked.items():
        t = covered(watch.answers, produced, watch.positives[eid])
        fresh.append(float("inf") if t is None else t - produced)
    checkpoints = sum(
        1 for line in (logs / "trainer.log").read_text().splitlines() if " checkpoint " in line
    )
    fresh.sort()
    finite = [f for f in fresh if f != float("inf")]
    if not finite:
        raise SystemExit(f"no positive was served: see the logs in {logs}")
    q = statistics.quantiles(fresh, n=100, method="inclusive") if len(fresh) > 1 else fresh * 99
    return {
        "marked": len(fresh),
        "never_served": len(fresh) - len(finite),
        "p50_s": round(q[49], 3),
        "p99_s": round(q[98], 3),
        "events_per_s": round(events / SECONDS, 1),
        "checkpoints_per_min": round(60 * checkpoints / (SECONDS + DRAIN_S), 1),
        "logs": str(logs),
    }


def main() -> None:
    runs = {}
    only = os.environ.get("BENCH_RUNS")  # e.g. "1000" or "1000_1m": a quick look at one
    for rate, hashed in ((1000.0, False), (10.0, False), (1000.0, True), (10.0, True)):
        if only and only != f"{int(rate)}{'_1m' if hashed else ''}":
            continue
        name = f"{int(rate)}_per_s{'_1m' if hashed else ''}"
        runs[name] = result = loop(rate, hashed)
        print(name, result, flush=True)
    if only:
        return
    default, low = runs["1000_per_s"], runs["10_per_s"]
    big, big_low = runs["1000_per_s_1m"], runs["10_per_s_1m"]
    print_figures(
        {
            "freshness_p50_s": default["p50_s"],
            "freshness_p99_s": default["p99_s"],
            "events_per_s": default["events_per_s"],
            "recommendations_per_s": 1000.0,
            "checkpoints_per_min": default["checkpoints_per_min"],
            "freshness_p50_s_10_per_s": low["p50_s"],
            "freshness_p99_s_10_per_s": low["p99_s"],
            "freshness_p50_s_1m_weights": big["p50_s"],
            "freshness_p99_s_1m_weights": big["p99_s"],
            "freshness_p99_s_1m_weights_10_per_s": big_low["p99_s"],
            "checkpoints_per_min_1m_weights": big["checkpoints_per_min"],
            "marked_outcomes": sum(r["marked"] for r in runs.values()),
            "never_served": sum(r["never_served"] for r in runs.values()),
            "checkpoint_every_s": float(CHECKPOINT_EVERY_S),
        }
    )


if __name__ == "__main__":
    main()
