"""Soak: the whole loop at a fixed rate for a set time, and whether anything grows without bound.

Starts the joiner, the trainer (champion and a challenger), the monitor, the API and a storefront
that ranks through the API, in fresh topics, a fresh archive and a fresh Redis namespace, with
the default checkpoints and retention. Each minute it samples every process's RSS, what the
run's keys take in Redis (and the server's ``used_memory``: the server may be shared), the
archive's size, the versions each model keeps, the joiner's open windows (its reports on the
stats topic) and the consumer groups' lag. After a warm-up (the first ``--warmup`` minutes) it
fits each series' slope. At the end the storefront stops, the last windows close, and every
impression must have become exactly one example.

Last line: one JSON object (``minutes``, ``events_per_s``, ``max_rss_growth_mb_per_h`` of the
worst process, ``redis_growth_mb_per_h``, ``versions_kept`` per model,
``snapshot_archive_growth_mb_per_h``, ``impressions``, ``examples``, ``consumer_lag_max``...).
Run: ``python bench/soak.py [--minutes 10]`` after ``make infra-up``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streamlearn.events import JoinReport
from streamlearn.processes import PROCESSES
from streamlearn.settings import Settings, TopicRole
from streamlearn.snapshots import open_store
from topics import client_config, delete_namespace, end_offsets, ensure_topics

CHALLENGER = {"name": "ctr-fm", "learner": {"kind": "fm"}}
GROUPS: dict[str, tuple[TopicRole, ...]] = {
    "joiner": ("recommendations", "outcomes"),
    "trainer": ("examples",),
    "monitor": ("examples",),
}


def health(reports: dict[str, JoinReport]) -> list[Any]:
    return [h for report in reports.values() for h in report.partitions.values()]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def namespace_mb(r: redis.Redis[bytes], prefix: str) -> float:
    """What this run's keys take in Redis (MEMORY USAGE): the server may hold others' too."""
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    return sum(r.memory_usage(k) or 0 for k in keys) / 2**20


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    cov = sum((t - mx) * (v - my) for t, v in points)
    return 0.0 if var == 0 else cov / var * 3600


def lag(s: Settings, probe: Consumer) -> dict[str, int]:
    """Per consumer group: records on its input topics past what it has committed."""
    out = {}
    for group, roles in GROUPS.items():
        c = Consumer(client_config(s, **{"group.id": f"{s.topic_prefix}{group}"}))
        try:
            behind = 0
            for role in roles:
                topic = s.topic(role)
                ends = end_offsets(probe, topic)
                parts = [TopicPartition(topic, p) for p in ends]
                for tp in c.committed(parts, timeout=10):
                    behind += ends[tp.partition] - max(tp.offset, 0)
            out[group] = behind
        finally:
            c.close()
    return out


class Reader:
    """Reads a topic from the start as it grows, committed records only."""

    def __init__(self, s: Settings, role: TopicRole) -> None:
        self.topic = s.topic(role)
        self.c = Consumer(
            client_config(
                s,
                **{
                    "group.id": f"soak-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": True,
                },
            )
        )
        self.c.subscribe([self.topic])

    def read(self, seconds: float = 2.0) -> list[bytes]:
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.c.consume(5000, timeout=0.5):
                err = m.error()
                if err is None:
                    out.append(m.value() or b"")
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(err))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="recommendations per second")
    parser.add_argument("--warmup", type=float, default=None, help="minutes; default a fifth")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args()
    warmup_s = 60 * (args.warmup if args.warmup is not None else max(1.0, args.minutes / 5))
    home = Path(tempfile.mkdtemp(prefix="soak-"))
    prefix = f"soak{uuid.uuid4().hex[:6]}."
    env = {
        **os.environ,
        "STREAMLEARN_DEV_MODE": "true",  # a bench is development
        "STREAMLEARN_TOPIC_PREFIX": prefix,
        "STREAMLEARN_ARCHIVE_URL": f"file://{home}/archive",
        "STREAMLEARN_CHALLENGERS": json.dumps([CHALLENGER]),
        "STREAMLEARN_SIM_RATE": str(args.rate),
        # Short enough that the last windows close within a minute of the end.
        "STREAMLEARN_ATTRIBUTION_WINDOW_S": "20",
        "STREAMLEARN_IDLE_TIMEOUT_S": "5",
        "STREAMLEARN_JOINER_STATS_S": "5",
        "STREAMLEARN_JOINER_METRICS_PORT": "0",
        "STREAMLEARN_TRAINER_METRICS_PORT": "0",
        "STREAMLEARN_MONITOR_METRICS_PORT": "0",
    }
    os.environ.update(env)
    s = Settings()
    ensure_topics(s)
    logs = home / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, process in PROCESSES.items():
        if process.in_loop:
            with open(logs / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(
                    process.command(*process.loop_args), env=env, stdout=out, stderr=out
                )
    print(f"soak: {args.minutes} min at {args.rate} recommendations/s; logs in {logs}")
    store = open_store(s)
    r = redis.Redis.from_url(s.redis_url)
    probe = Consumer(client_config(s, **{"group.id": f"soak-probe-{uuid.uuid4().hex}"}))
    stats = Reader(s, "joiner_stats")
    reports: dict[str, JoinReport] = {}
    samples: list[dict[str, Any]] = []
    start = time.time()
    try:
        while (elapsed := time.time() - start) < args.minutes * 60:
            time.sleep(min(args.every, args.minutes * 60 - elapsed))
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise SystemExit(f"stopped unexpectedly: {dead}; see {logs}")
            for raw in stats.read(1.0):
                report = JoinReport.model_validate_json(raw)
                reports[report.worker] = report
            sample = {
                "t": time.time() - start,
                "rss_mb": {n: rss_mb(p.pid) for n, p in procs.items()},
                "redis_mb": int(r.info("memory")["used_memory"]) / 2**20,
                "redis_namespace_mb": namespace_mb(r, prefix),
                "archive_mb": directory_mb(home / "archive"),
                "versions": {m.name: len(store.version_times(m.name)) for m in s.models},
                "open_windows": sum(h.pending_impressions for h in health(reports)),
                "lag": lag(s, probe),
                "recommendations": sum(end_offsets(probe, s.topic("recommendations")).values()),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        # The end: the storefront stops; every window closes; count what came out.
        procs["simulator"].terminate()
        procs["simulator"].wait(30)
        recs = Reader(s, "recommendations")
        examples_in = Reader(s, "examples")
        impressions: set[str] = set()
        ids: Counter[str] = Counter()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 30:
            got = [orjson.loads(v) for v in recs.read(2.0)]
            for rec in got:
                impressions |= {f"{rec['recommendation_id']}:{i['item_id']}" for i in rec["items"]}
            new = [orjson.loads(v) for v in examples_in.read(2.0)]
            ids.update(e["example_id"] for e in new if not e.get("correction"))
            if got or new:
                quiet_since = time.monotonic()
            if impressions and set(ids) >= impressions:
                break
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        probe.close()
    delete_namespace(s)
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        r.delete(key)
    steady = [x for x in samples if x["t"] >= warmup_s] or samples[-2:]
    growth = {name: slope_per_h([(x["t"], x["rss_mb"][name]) for x in steady]) for name in procs}
    span_s = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 1.0
    rate = (samples[-1]["recommendations"] - samples[0]["recommendations"]) / span_s
    result = {
        "minutes": args.minutes,
        "events_per_s": round(rate, 1),
        "impressions_per_s": round(rate * s.sim_slate_size, 1),
        "rss_growth_mb_per_h": {n: round(g, 1) for n, g in growth.items()},
        "max_rss_growth_mb_per_h": round(max(growth.values()), 1),
        "rss_mb_end": {n: round(v, 1) for n, v in samples[-1]["rss_mb"].items()},
        # This run's keys; the server's used_memory beside it (the server may be shared).
        "redis_growth_mb_per_h": round(
            slope_per_h([(x["t"], x["redis_namespace_mb"]) for x in steady]), 1
        ),
        "redis_mb_end": round(samples[-1]["redis_namespace_mb"], 1),
        "redis_used_memory_growth_mb_per_h": round(
            slope_per_h([(x["t"], x["redis_mb"]) for x in steady]), 1
        ),
        "versions_kept": samples[-1]["versions"],
        "versions_kept_max": {
            m.name: max(x["versions"][m.name] for x in samples) for m in s.models
        },
        "retention_keep_last": s.retention.keep_last,
        "snapshot_archive_growth_mb_per_h": round(
            slope_per_h([(x["t"], x["archive_mb"]) for x in steady]), 2
        ),
        "archive_mb_end": round(samples[-1]["archive_mb"], 2),
        "open_windows_max": max(x["open_windows"] for x in samples),
        "consumer_lag_max": max(max(x["lag"].values()) for x in samples),
        "impressions": len(impressions),
        "examples": sum(ids.values()),
        "examples_unique": len(ids),
        "examples_missing": len(impressions - set(ids)),
        "examples_doubled": sum(1 for n in ids.values() if n > 1),
    }
    print(json.dumps(result))
    ok = result["examples_missing"] == 0 and result["examples_doubled"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
