"""What the benches share: the baseline of reading a topic with raw confluent-kafka, and how
figures are printed (one per line, then all of them as the last line's JSON object)."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer

from streamlearn.settings import Settings


def raw_consume_per_s(s: Settings, topic: str, n: int, batch: int = 10_000) -> float:
    """Records/s a bare consumer reads ``n`` records of ``topic`` at, from its first record
    (a new group, from the earliest offset, no commits): what any consumer of it can reach."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got, start = 0, None
    while got < n:
        msgs = c.consume(batch, timeout=1.0)
        if msgs and start is None:
            start = time.perf_counter()
        got += sum(1 for m in msgs if not m.error())
    elapsed = time.perf_counter() - (start or time.perf_counter())
    c.close()
    return got / elapsed


def api_env(port: int, **extra: str) -> dict[str, str]:
    """A bench's settings for processes with an API: a namespace and an archive of its own,
    the API on ``port`` without an access log, and ``extra``."""
    return {
        "STREAMLEARN_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}.",
        "STREAMLEARN_ARCHIVE_URL": f"file://{tempfile.mkdtemp()}",
        "STREAMLEARN_API_PORT": str(port),
        "STREAMLEARN_API_ACCESS_LOG": "false",
        "STREAMLEARN_ADMIN_KEY": "bench",
        **extra,
    }


def print_figures(figures: Mapping[str, Any]) -> None:
    """Each figure on a line of its own, then the JSON object every bench ends with."""
    width = max(map(len, figures)) + 2
    for key, value in figures.items():
        print(f"{key:{width}} {value}")
    print(json.dumps(figures))
