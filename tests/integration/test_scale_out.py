"""Every stage two at a time, on the real broker, under load: two joiners sharing the input
partitions, two trainers (TRAINER_MODELS: the champion on one, the challenger on the other), two
archivers sharing the event topics, two monitors (one acts, one stands by), two APIs, each
ranking for a storefront of its own. The same checks as one of each: every impression labeled
exactly once and one slate per recommendation, every example learned once by each model (and
its newest version rebuilt bit for bit from its parent and the examples between), every record
archived once."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

from streamlearn.archive_query import connect
from streamlearn.events import JoinReport, Slate
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from tests.conftest import (
    Processes,
    configure,
    examples,
    free_port,
    read_topic,
    records,
    served_model,
    traffic,
    wait_until,
)
from tests.integration.test_loop import loop_env

pytestmark = pytest.mark.integration

MODELS = ("ctr", "ctr-aware")


def archived(s: Settings, table: str) -> list[tuple[int, int]]:
    rows = connect(s.store_url).execute(f"SELECT kafka_partition, kafka_offset FROM {table}")
    return rows.fetchall()


def on_topic(s: Settings, table: str) -> set[tuple[int, int]]:
    return {(p, o) for p, o, _ in read_topic(s.kafka_bootstrap, s.topic(table))}  # type: ignore[arg-type]


def test_two_of_every_stage_count_every_event_once(
    processes: Processes, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes,
        monkeypatch,
        **{
            **loop_env(env),
            "STREAMLEARN_CHALLENGERS": json.dumps([{"name": "ctr-aware", "position": "feature"}]),
            "STREAMLEARN_SIM_RATE": "50",
            "STREAMLEARN_ARCHIVE_ROLL_S": "1",
            "STREAMLEARN_MONITOR_EVALUATE_S": "1",
            "STREAMLEARN_MONITOR_LEASE_S": "3",
        },
    )
    ports = [s.api.port, free_port()]
    for n in (0, 1):
        for stage in ("joiner", "archiver", "monitor"):
            processes.start(
                f"{stage}-{n}",
                "-m",
                f"consumers.{stage}",
                **{f"STREAMLEARN_{stage.upper()}_METRICS_PORT": str(free_port())},
            )
        processes.start(
            f"trainer-{n}",
            "-m",
            "consumers.trainer",
            STREAMLEARN_TRAINER_MODELS=json.dumps([MODELS[n]]),
            STREAMLEARN_TRAINER_METRICS_PORT=str(free_port()),
        )
        processes.start(f"api-{n}", "-m", "api", STREAMLEARN_API_PORT=str(ports[n]))
    # Straight to Kafka first: the APIs serve once the trainers have made a first version.
    direct = processes.start("simulator", "-m", "consumers.simulator", "--duration", "15")
    assert direct.wait(120) == 0, processes.log("simulator")
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    for base in bases:
        wait_until(lambda b=base: (served_model(b) or ("", None))[1] is not None, "APIs serving")  # type: ignore[misc]
    storefronts = [
        processes.start(
            f"storefront-{n}",
            "-m",
            "consumers.simulator",
            "--via-api",
            "--api",
            base,
            "--duration",
            "20",
            "--drain",
            "5",
        )
        for n, base in enumerate(bases)
    ]
    for n, sim in enumerate(storefronts):
        assert sim.wait(180) == 0, processes.log(f"storefront-{n}")

    recs, _, impressions = traffic(s)
    wait_until(lambda: len(examples(s)) >= len(impressions), "every impression joined", every=2)
    # Through both APIs, and the two joiners each with partitions of their own.
    assert sum(r.candidates is not None for r in recs) > 500
    workers = {r.worker for r in records(s, "joiner_stats", JoinReport) if r.partitions}
    assert len(workers) == 2

    # Exactly once: every impression one example, every recommendation one slate.
    counts = collections.Counter(e.example_id for e in examples(s))
    assert set(counts) == impressions and max(counts.values()) == 1
    slates = records(s, "slates", Slate)
    assert sorted(x.recommendation_id for x in slates) == sorted(r.recommendation_id for r in recs)

    # Each trainer learned every example once, for its own model only.
    store = open_store(s)
    n_examples = len(counts)

    def learned() -> bool:
        metas = [store.meta(m, v) for m in MODELS if (v := store.latest_version(m)) is not None]
        return len(metas) == 2 and all(m["samples_seen"] == n_examples for m in metas)

    wait_until(learned, "both models to learn every example")
    assert "ctr-aware" not in processes.log("trainer-0")
    assert "checkpoint ctr v" not in processes.log("trainer-1")
    for model in MODELS:
        version = store.latest_version(model)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamlearn",
                "verify",
                model,
                str(version),
                "--source",
                "topic",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert f"identical: {model} v{version}" in done.stdout, done.stdout + done.stderr

    # Every record archived once, whichever archiver had its partition.
    for table in ("recommendations", "outcomes", "examples"):
        wait_until(
            lambda t=table: set(archived(s, t)) >= on_topic(s, t),  # type: ignore[misc]
            f"{table} archived",
        )
        rows = archived(s, table)
        assert len(rows) == len(set(rows)) and set(rows) == on_topic(s, table), table

    # One monitor acted; the other stood by.
    acting = [n for n in (0, 1) if "this monitor acts" in processes.log(f"monitor-{n}")]
    assert len(acting) == 1
    assert "standing by" in processes.log(f"monitor-{1 - acting[0]}")
