"""The event archive on the real broker and the local object store: every record once, through
crashes, and SQL over it that counts what the topics hold."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from streamlearn.archive import PREFIX
from streamlearn.archive_query import connect
from streamlearn.events import LabeledExample, Recommendation
from streamlearn.features import example_features
from streamlearn.settings import Settings
from streamlearn.snapshots import SnapshotStore, open_store
from tests.conftest import (
    ARTIFACTS,
    NEEDS_BROWSER,
    Processes,
    configure,
    read_topic,
    records,
    served_version,
    wait_until,
)
from tests.factories import brute_auc

pytestmark = pytest.mark.integration

ADMIN = "archive-admin"
TABLES = ("recommendations", "outcomes", "examples", "dead_letters")


def joining(processes: Processes, monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """A namespace of its own with a short window and a slow storefront (``env`` on top), and
    its joiner running: what every test here archives."""
    quick = {
        "STREAMLEARN_ATTRIBUTION_WINDOW_S": "3",
        "STREAMLEARN_SIM_RATE": "30",
        "STREAMLEARN_SIM_MEAN_DELAY_S": "1",
        "STREAMLEARN_ARCHIVE_ROLL_S": "1",
    }
    s = configure(processes, monkeypatch, **{**quick, **env})
    processes.start("joiner", "-m", "consumers.joiner")
    return s


def topic_offsets(s: Settings, table: str) -> set[tuple[int, int]]:
    return {(p, o) for p, o, _ in read_topic(s.kafka_bootstrap, s.topic(table))}  # type: ignore[arg-type]


def archived(s: Settings, table: str) -> list[tuple[int, int]]:
    con = connect(s.store_url)
    return con.execute(f"SELECT kafka_partition, kafka_offset FROM {table}").fetchall()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``streamlearn ARGS`` with this test's settings (the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "streamlearn", *args],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )


def archived_all(s: Settings) -> bool:
    """Every example the topic holds is in the archive."""
    topic = topic_offsets(s, "examples")
    return bool(topic) and set(archived(s, "examples")) >= topic


def learning_live(processes: Processes, s: Settings, model: str, versions: int) -> SnapshotStore:
    """The archiver and the trainer through ten seconds of traffic, until ``model`` has
    ``versions`` versions; returns the snapshot store."""
    processes.start("archiver", "-m", "consumers.archiver")
    processes.start("trainer", "-m", "consumers.trainer")
    sim = processes.start("simulator", "-m", "consumers.simulator", "--duration", "10")
    assert sim.wait(120) == 0
    store = open_store(s)
    wait_until(lambda: (store.latest_version(model) or 0) >= versions, f"{versions} versions")
    return store


def files(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (root / PREFIX).glob("*/dt=*/hour=*/*.parquet")
    }


def test_every_record_once_through_a_crash_between_files_and_commit_and_a_sigkill(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = joining(
        processes,
        monkeypatch,
        STREAMLEARN_SIM_RATE="40",
        STREAMLEARN_ARCHIVE_ROLL_ROWS="150",
        STREAMLEARN_ARCHIVE_ROLL_S="2",
    )
    root = Path(s.store_url.removeprefix("file://"))
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
    redone = "cut short by a crash: writing it again"
    wait_until(lambda: redone in processes.log("archiver-2"), "the cut roll found")
    wait_until(lambda: processes.log("archiver-2").count("archived ") >= 3, "rolls after it")
    second.send_signal(signal.SIGKILL)  # anywhere: a plain crash
    second.wait()
    processes.start("archiver-3", "-m", "consumers.archiver")
    assert sim.wait(120) == 0

    def complete() -> bool:
        """Every record of the four topics archived, the examples still coming included."""
        return all(set(archived(s, t)) == topic_offsets(s, t) for t in TABLES)

    wait_until(lambda: len(topic_offsets(s, "examples")) > 0, "examples")
    wait_until(complete, "the archive to hold what the topics hold", every=2)
    for table in TABLES:
        rows = archived(s, table)
        assert len(rows) == len(set(rows)), f"{table}: a row archived twice"
    # Written again after the crash: the same names with the same bytes; none changed since.
    now = files(root)
    assert {path: now[path] for path in written} == written
    assert not list((root / PREFIX / "_rolls").glob("*/*/*")), "a roll left unfinished"


def test_sql_over_the_archive_counts_what_the_topics_hold(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = joining(processes, monkeypatch)
    processes.start("archiver", "-m", "consumers.archiver")
    sim = processes.start("simulator", "-m", "consumers.simulator", "--duration", "10")
    assert sim.wait(120) == 0
    examples = read_topic(s.kafka_bootstrap, s.topic("examples"))
    wait_until(lambda: len(archived(s, "examples")) >= len(examples) > 0, "the examples archived")

    con = connect(s.store_url)
    by_position = con.execute(
        "SELECT position, count(*), avg(label::INT) FROM examples GROUP BY position ORDER BY 1"
    ).fetchall()
    assert sum(n for _, n, _ in by_position) == len(examples)
    assert [p for p, _, _ in by_position] == list(range(s.sim_slate_size))
    # Hive partitions are columns, and JSON columns are readable with DuckDB's operators.
    days = {d for (d,) in con.execute("SELECT DISTINCT dt FROM recommendations").fetchall()}
    recs = records(s, "recommendations", Recommendation)
    assert days == {datetime.fromtimestamp(r.event_time, UTC).date() for r in recs}
    prices = con.execute(
        "SELECT count(*) FROM examples WHERE (item_features->>'price') IS NOT NULL"
    ).fetchone()
    assert prices is not None and prices[0] == len(examples)

    # The same through the command, as CSV.
    out = tmp_path / "by_position.csv"
    query = "SELECT position, count(*) AS n FROM examples GROUP BY position ORDER BY position"
    done = cli("archive", "query", query, "--csv", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "position,n"
    assert [tuple(map(int, line.split(","))) for line in lines[1:]] == [
        (p, n) for p, n, _ in by_position
    ]
    bad = cli("archive", "query", "SELECT nope FROM examples")
    assert bad.returncode == 1 and "error" in bad.stdout and "Traceback" not in bad.stderr


def test_a_backfilled_challenger_learns_on_live_with_nothing_skipped_or_doubled(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History archived, a new challenger backfilled on it; the trainer then takes it on from
    the topic where the backfill's offsets say, through more live traffic."""
    challenger = '[{"name": "ctr-bf"}]'
    s = joining(processes, monkeypatch, STREAMLEARN_CHALLENGERS=challenger)
    processes.start("archiver", "-m", "consumers.archiver")
    first = processes.start("simulator", "-m", "consumers.simulator", "--duration", "10")
    assert first.wait(120) == 0

    wait_until(lambda: archived_all(s), "the history archived")
    today = datetime.now(UTC).date()
    days = [str(today - timedelta(days=1)), str(today + timedelta(days=1))]
    done = cli("backfill", "--model", "ctr-bf", "--from", days[0], "--to", days[1])
    assert done.returncode == 0, done.stdout + done.stderr
    store = open_store(s)
    backfilled = store.get("ctr-bf")
    history = archived(s, "examples")
    assert backfilled.samples_seen == len(history)
    cut = {}
    for p, o in history:
        cut[p] = max(cut.get(p, -1), o + 1)
    assert backfilled.offsets == cut
    again = cli("backfill", "--model", "ctr-bf", "--from", days[0], "--to", days[1])
    assert again.returncode == 1 and "new lineage" in again.stdout  # never over a lineage

    # Live: the trainer resumes the challenger from the backfill's offsets, through more traffic.
    processes.start("trainer", "-m", "consumers.trainer")
    more = processes.start("simulator-2", "-m", "consumers.simulator", "--duration", "8")
    assert more.wait(120) == 0
    wait_until(lambda: "resuming ctr-bf from v" in processes.log("trainer"), "the resume")

    def caught_up() -> bool:
        topic = topic_offsets(s, "examples")
        ends: dict[int, int] = {}
        for p, o in topic:
            ends[p] = max(ends.get(p, -1), o + 1)
        latest = store.get("ctr-bf")
        return latest.offsets == ends and latest.samples_seen == len(topic)

    wait_until(caught_up, "the challenger to learn every example once", every=2)


def test_a_version_the_live_trainer_wrote_replays_identically(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``streamlearn verify`` rebuilds versions of the live trainer from their parents and the
    examples between them, from the archive and from the topic: the same weights, bit for bit.
    The trainer learns two models (one with random initial factors) from several partitions."""
    s = joining(
        processes,
        monkeypatch,
        STREAMLEARN_CHALLENGERS='[{"name": "fm", "learner": {"kind": "fm", "n_factors": 4}}]',
        STREAMLEARN_CHECKPOINT_EVERY_N="60",
        STREAMLEARN_CORRECTION_POLICY="learn",
    )
    store = learning_live(processes, s, "fm", 4)

    wait_until(lambda: archived_all(s), "the examples archived")
    for model in ("ctr", "fm"):
        latest = store.latest_version(model)
        assert latest is not None and latest >= 3
        child = store.get(model, latest)
        # Its recorded order ends, per partition, at its offsets (one partition or several,
        # as the last checkpoint's interval happened to read them).
        assert child.order and all(child.offsets[p] >= o for p, o in child.order)
        for version, source in ((latest, "archive"), (latest - 1, "topic"), (1, "archive")):
            done = cli("verify", model, str(version), "--source", source)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"identical: {model} v{version}" in done.stdout, done.stdout
    # A version whose weights are not what its offsets say is caught.
    tampered = store.get("ctr", 2)
    tampered.model.learn_one({"segment": "x"}, True)
    store.put(replace(tampered, version=store.next_version("ctr"), parent_version=1))
    bad = cli("verify", "ctr", str(store.latest_version("ctr")))
    assert bad.returncode == 1 and "DIFFERS" in bad.stdout, bad.stdout


@NEEDS_BROWSER
def test_offline_evaluation_of_live_versions_equals_figures_computed_from_the_topic(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, browser: WebDriver, tmp_path: Path
) -> None:
    """``streamlearn evaluate`` scores two versions the trainer wrote on the archived days; its
    figures equal those computed here from the topic's own records; its HTML report opens in
    Chromium, a point's value on hover (screenshot: ``test-artifacts/evaluation.png``)."""
    s = joining(
        processes, monkeypatch, STREAMLEARN_CHECKPOINT_EVERY_N="200", STREAMLEARN_ADMIN_KEY=ADMIN
    )
    store = learning_live(processes, s, "ctr", 2)
    # No more examples from here on (windows still open stay in the joiner's state).
    joiner = processes.running["joiner"]
    joiner.terminate()
    assert joiner.wait(60) == 0
    examples = records(s, "examples", LabeledExample)
    held = topic_offsets(s, "examples")
    wait_until(lambda: set(archived(s, "examples")) == held, "every example archived")

    latest = store.latest_version("ctr")
    assert cli("registry", "promote", "ctr", str(latest)).returncode == 0  # named by its alias
    today = datetime.now(UTC).date()
    period = [str(today - timedelta(days=1)), str(today)]
    report, figures = tmp_path / "evaluation.html", tmp_path / "evaluation.json"
    done = cli(
        "evaluate", "ctr", "1", "champion", "--from", period[0], "--to", period[1],
        "--html", str(report), "--json", str(figures),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "period" in done.stdout and "v1 AUC" in done.stdout
    got = json.loads(figures.read_text())
    assert got["versions"] == [1, latest]

    days: dict[str, list[LabeledExample]] = {}
    for e in examples:
        day = str(datetime.fromtimestamp(e.recommendation_time, UTC).date())
        days.setdefault(day, []).append(e)
    assert set(got["days"]) == set(days)
    for version in (1, latest):
        model = store.get("ctr", version).model
        for day, held in days.items():
            scored = [
                (model.predict_proba_one(example_features(model.spec, e)), e.label) for e in held
            ]
            figure = got["days"][day][str(version)]
            assert figure["examples"] == len(scored)
            assert figure["conversion_rate"] == pytest.approx(
                sum(y for _, y in scored) / len(scored)
            )
            assert figure["roc_auc"] == pytest.approx(brute_auc(scored), abs=1e-9)

    browser.get(report.as_uri())
    assert browser.title == "Offline evaluation: ctr"
    charts = browser.find_elements(By.TAG_NAME, "svg")
    assert len(charts) == 5
    point = charts[0].find_element(By.TAG_NAME, "circle")
    ActionChains(browser).move_to_element(point).perform()
    hover = point.find_element(By.TAG_NAME, "title").get_attribute("textContent") or ""
    assert hover.startswith("v1 · ") and float(hover.rsplit(": ", 1)[1]) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "evaluation.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # The same figures on the dashboard, through the admin API.
    processes.start("api", "-m", "api")
    base = f"http://127.0.0.1:{s.api.port}"
    wait_until(lambda: served_version(base) == latest, "the API")
    browser.get(f"{base}/dashboard")
    browser.find_element(By.ID, "key").send_keys(ADMIN + "\n")
    asked = browser.find_element(By.ID, "eval-versions")
    asked.clear()
    asked.send_keys("1, champion")
    browser.find_element(By.ID, "evaluate").click()
    table = browser.find_element(By.ID, "evaluation")
    wait_until(lambda: "period" in table.text, "the dashboard's evaluation")
    period = [row.text for row in table.find_elements(By.TAG_NAME, "tr") if "period" in row.text]
    expected = got["period"]
    assert [r.split()[:5] for r in period] == [
        ["period", f"v{v}", str(expected[str(v)]["examples"]),
         f"{expected[str(v)]['conversion_rate']:.4f}", f"{expected[str(v)]['roc_auc']:.4f}"]
        for v in (1, latest)
    ]  # fmt: skip
    browser.execute_script("arguments[0].scrollIntoView()", table)
    shot = ARTIFACTS / "evaluation-dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_archive_on_s3_holds_every_example_once_and_replays_from_there(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, s3: dict[str, Any]
) -> None:
    """The same on an S3 store (moto's server): the archiver writes through obstore, SQL reads
    the files back through obstore, and a version the trainer wrote (its snapshots on S3 too)
    replays identically from the S3 archive."""
    s = joining(
        processes,
        monkeypatch,
        STREAMLEARN_ARCHIVE_URL=f"s3://snapshots/archive-{uuid.uuid4().hex[:8]}",
        STREAMLEARN_ARCHIVE_OPTIONS=json.dumps(s3),
        STREAMLEARN_CHECKPOINT_EVERY_N="100",
    )
    assert s.store_url.startswith("s3://")
    processes.start("archiver", "-m", "consumers.archiver")
    processes.start("trainer", "-m", "consumers.trainer")
    sim = processes.start("simulator", "-m", "consumers.simulator", "--duration", "8")
    assert sim.wait(120) == 0

    def each_once() -> bool:
        topic = topic_offsets(s, "examples")
        rows = (
            connect(s.store_url, s.archive_options)
            .execute("SELECT kafka_partition, kafka_offset FROM examples")
            .fetchall()
        )
        return bool(topic) and sorted(rows) == sorted(topic)  # each once

    wait_until(each_once, "the examples archived on S3", every=2)
    store = open_store(s)
    wait_until(lambda: (store.latest_version("ctr") or 0) >= 2, "two versions")

    def counted_by_the_cli() -> bool:
        # Again until equal: windows still closing add examples after the first match.
        done = cli("archive", "query", "SELECT count(*) AS n FROM examples")
        assert done.returncode == 0, done.stderr
        return f"│ {len(topic_offsets(s, 'examples'))} │" in done.stdout

    wait_until(counted_by_the_cli, "SQL through the CLI to count every example", every=2)
    latest = store.latest_version("ctr")
    done = cli("verify", "ctr", str(latest), "--source", "archive")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"identical: ctr v{latest}" in done.stdout
