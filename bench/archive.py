"""The archiver's throughput through the real broker, next to the raw consume rate of the topic.

1. Produces N labeled examples (the widest records, with features) into a fresh examples topic.
2. Raw baseline: one confluent-kafka consumer reads the topic end to end.
3. Starts one archiver process on the backlog (rolls of 20,000 rows, or 1 s) and waits until
   its rows are all in the local archive, counted with SQL over the Parquet files; the rate is
   the rows of every file but the first over the time from the first file to the last.

4. Backfills a new model on the archived examples, in process (``backfill_per_s``, from
   reading the files to the last snapshot), beside the trainer's own code learning the same
   examples from memory (``train_in_memory_per_s``).
5. Replays every version of the backfilled lineage from its parent and the archive
   (``streamlearn verify``'s code): ``replay_identical`` when every rebuilt model's
   fingerprint equals its snapshot's.

Prints figures; the last line is one JSON object. Run: ``python bench/archive.py [N]`` after
``make infra-up``.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from common import print_figures, raw_consume_per_s
from confluent_kafka import Producer

from streamlearn.archive import PREFIX
from streamlearn.archive_query import connect
from streamlearn.backfill import backfill
from streamlearn.clock import SystemClock
from streamlearn.learning import ModelSpec
from streamlearn.settings import Settings
from streamlearn.simulation import Storefront
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.training import Training, TrainingPolicy
from streamlearn.verification import archived, span, verify
from topics import delete_namespace, ensure_topics, producer_config

os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")  # a bench is development

ROOT = Path(__file__).resolve().parent.parent
GOAL_ROWS_PER_S = 20_000


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    archive = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    os.environ.update(
        {
            "STREAMLEARN_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}.",
            "STREAMLEARN_ARCHIVE_URL": f"file://{archive}",
            "STREAMLEARN_ARCHIVE_ROLL_ROWS": "20000",
            "STREAMLEARN_ARCHIVE_ROLL_S": "1",
            "STREAMLEARN_ARCHIVER_METRICS_PORT": "0",
            "LOG_LEVEL": "warn",
        }
    )
    s = Settings()
    ensure_topics(s)
    atexit.register(delete_namespace, s)
    producer = Producer(producer_config(s, **{"linger.ms": 20}))
    made = 0
    made_examples = Storefront(traffic_seed=5).labeled_examples(n, start=time.time() - 3600)
    for example in made_examples:
        producer.produce(
            s.topic("examples"), example.model_dump_json().encode(), example.user_id.encode()
        )
        producer.poll(0)
        made += 1
    producer.flush(60)
    raw_per_s = raw_consume_per_s(s, s.topic("examples"), made)

    archiver = subprocess.Popen(
        [sys.executable, "-m", "consumers.archiver"],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            time.sleep(1)
            root = Path(s.store_url.removeprefix("file://"))
            files = list((root / PREFIX / "examples").glob("dt=*/hour=*/*.parquet"))
            count = connect(s.store_url).execute("SELECT count(*) FROM examples").fetchone()
            if count is not None and count[0] >= made:
                break
    finally:
        archiver.terminate()
        archiver.wait(30)
    # From the first file to the last: the rows of every file but the first (read before it).
    written = sorted((f.stat().st_mtime, pq.read_metadata(f).num_rows) for f in files)
    rows_per_s = sum(n for _, n in written[1:]) / (written[-1][0] - written[0][0])
    con = connect(s.store_url)
    snapshots = ObjectSnapshotStore(f"file://{archive}/bench-snapshots", b"b" * 32)
    today = datetime.now(UTC).date()
    started = time.perf_counter()
    filled = backfill(
        con,
        ModelSpec(name="bench-bf"),
        snapshots,
        TrainingPolicy(),
        SystemClock(),
        today - timedelta(days=1),
        today + timedelta(days=1),
    )
    backfill_per_s = filled.examples / (time.perf_counter() - started)
    # Every version of the lineage rebuilt from its parent and the archive, bit for bit.
    verdicts, parent, started = [], None, time.perf_counter()
    for version in filled.versions:
        child = snapshots.get("bench-bf", version)
        examples = archived(con, *span(parent, child))
        assert examples is not None, "the archive holds what was backfilled"
        verdicts.append(verify(parent, child, examples, "archive"))
        parent = child
    replay_per_s = sum(v.examples for v in verdicts) / (time.perf_counter() - started)
    training = Training(ModelSpec(name="bench-mem"), SystemClock())
    started = time.perf_counter()
    for offset, example in enumerate(made_examples):
        training.learn(example, 0, offset)
    in_memory_per_s = len(made_examples) / (time.perf_counter() - started)

    figures = {
        "rows": made,
        "files": len(files),
        "archive_rows_per_s": round(rows_per_s),
        "raw_consume_per_s": round(raw_per_s),
        "ratio_raw_to_archived": round(raw_per_s / rows_per_s, 1),
        "goal_rows_per_s": GOAL_ROWS_PER_S,
        "archive_bytes_per_row": round(sum(f.stat().st_size for f in files) / made, 1),
        "backfill_examples": filled.examples,
        "backfill_per_s": round(backfill_per_s),
        "train_in_memory_per_s": round(in_memory_per_s),
        "ratio_backfill_to_in_memory": round(backfill_per_s / in_memory_per_s, 2),
        "replay_versions": len(verdicts),
        "replay_examples": sum(v.examples for v in verdicts),
        "replay_per_s": round(replay_per_s),
        "replay_identical": all(v.identical for v in verdicts),
    }
    print_figures(figures)


if __name__ == "__main__":
    main()
