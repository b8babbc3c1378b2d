"""The event archive on the real broker and the local object store: every record once, through
crashes, and SQL over it that counts what the topics hold."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest

from streamlearn.archive import PREFIX
from streamlearn.archive_query import connect
from streamlearn.settings import Settings
from tests.conftest import Processes, configure, read_topic, wait_until

pytestmark = pytest.mark.integration

TABLES = ("recommendations", "outcomes", "examples", "dead_letters")


def topic_offsets(s: Settings, table: str) -> set[tuple[int, int]]:
    return {(p, o) for p, o, _ in read_topic(s.kafka_bootstrap, s.topic(table))}  # type: ignore[arg-type]


def archived(s: Settings, table: str) -> list[tuple[int, int]]:
    con = connect(s.archive_url)
    return con.execute(f"SELECT kafka_partition, kafka_offset FROM {table}").fetchall()


def files(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (root / PREFIX).glob("*/dt=*/hour=*/*.parquet")
    }


def test_every_record_once_through_a_crash_between_files_and_commit_and_a_sigkill(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="3",
        STREAMLEARN_SIM_RATE="40",
        STREAMLEARN_SIM_MEAN_DELAY_S="1",
        STREAMLEARN_ARCHIVE_ROLL_ROWS="150",
        STREAMLEARN_ARCHIVE_ROLL_S="2",
    )
    root = Path(s.archive_url.removeprefix("file://"))
    processes.start("joiner", "-m", "consumers.joiner")
    # The third roll's files are written, then the archiver dies before its commit.
    processes.env["STREAMLEARN_FAILPOINT"] = "archiver.before_commit:3"
    first = processes.start("archiver", "-m", "consumers.archiver")
    processes.env.pop("STREAMLEARN_FAILPOINT")
    sim = processes.start("simulator", "-m", "consumers.simulator", "--duration", "25")
    assert first.wait(120) == -signal.SIGKILL
    written = files(root)
    assert written, "the killed archiver had written files"
    markers = list((root / PREFIX / "_rolls").glob("*/*/*"))
    assert len(markers) == 1, markers  # the roll it was cut short in

    second = processes.start("archiver-2", "-m", "consumers.archiver")
    time.sleep(6)
    second.send_signal(signal.SIGKILL)  # anywhere: a plain crash
    second.wait()
    processes.start("archiver-3", "-m", "consumers.archiver")
    assert sim.wait(120) == 0
    assert "cut short by a crash: writing it again" in processes.log("archiver-2")

    def complete() -> bool:
        return (
            all(
                len(archived(s, t)) >= len(topic_offsets(s, t))
                for t in ("recommendations", "outcomes", "examples")
            )
            and len(topic_offsets(s, "examples")) > 0
        )

    wait_until(complete, "the archive to catch up with the topics", every=2)
    time.sleep(3)
    for table in TABLES:
        rows = archived(s, table)
        assert len(rows) == len(set(rows)), f"{table}: a row archived twice"
        assert set(rows) == topic_offsets(s, table), table
    # Written again after the crash: the same names with the same bytes; none changed since.
    now = files(root)
    assert {path: now[path] for path in written} == written
    assert not list((root / PREFIX / "_rolls").glob("*/*/*")), "a roll left unfinished"


def test_sql_over_the_archive_counts_what_the_topics_hold(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="3",
        STREAMLEARN_SIM_RATE="30",
        STREAMLEARN_SIM_MEAN_DELAY_S="1",
        STREAMLEARN_ARCHIVE_ROLL_S="1",
    )
    processes.start("joiner", "-m", "consumers.joiner")
    processes.start("archiver", "-m", "consumers.archiver")
    sim = processes.start("simulator", "-m", "consumers.simulator", "--duration", "10")
    assert sim.wait(120) == 0
    examples = read_topic(s.kafka_bootstrap, s.topic("examples"))
    wait_until(lambda: len(archived(s, "examples")) >= len(examples) > 0, "the examples archived")

    con = connect(s.archive_url)
    by_position = con.execute(
        "SELECT position, count(*), avg(label::INT) FROM examples GROUP BY position ORDER BY 1"
    ).fetchall()
    assert sum(n for _, n, _ in by_position) == len(examples)
    assert [p for p, _, _ in by_position] == list(range(s.sim_slate_size))
    # Hive partitions are columns, and JSON columns are readable with DuckDB's operators.
    days = con.execute("SELECT DISTINCT dt FROM recommendations").fetchall()
    assert days and all(len(d) == 10 for (d,) in days)
    prices = con.execute(
        "SELECT count(*) FROM examples WHERE (item_features->>'price') IS NOT NULL"
    ).fetchone()
    assert prices is not None and prices[0] == len(examples)
