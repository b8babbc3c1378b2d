"""The daily drift job on the real broker, Redis and the local object store: ten days of a
served storefront go through the topic and the archiver; the job reports on a quiet day and on
the day the customers' tastes turned over. Only the second retrains: its challenger is
backfilled on that day, announced to the webhook, and learned live by the trainer from where
the backfill ended, nothing skipped or doubled."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from streamlearn.alerting import Alert
from streamlearn.archive_query import connect
from streamlearn.clock import ManualClock
from streamlearn.outbox import Outbox
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from streamlearn.training import Training
from tests.conftest import (
    Processes,
    configure,
    courier,
    produce_examples,
    read_topic,
    records,
    wait_until,
)
from tests.factories import DAY, Receiver, storefront_days

pytestmark = pytest.mark.integration

PER_DAY = 1500


def report(day: dt.date) -> dict[str, object]:
    """``streamlearn report --day DAY`` with this test's settings (the environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "streamlearn", "report", "--day", day.isoformat()],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures: dict[str, object] = json.loads(done.stdout)
    return figures


def ends(s: Settings) -> dict[int, int]:
    out: dict[int, int] = {}
    for p, o, _ in read_topic(s.kafka_bootstrap, s.topic("examples")):
        out[p] = max(out.get(p, 0), o + 1)  # type: ignore[arg-type]
    return out


def test_the_flip_day_retrains_a_challenger_that_then_learns_live_and_a_quiet_day_does_not(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    hook = receiver.webhook()
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ARCHIVE_ROLL_S="1",
        STREAMLEARN_WEBHOOKS=json.dumps([hook]),
    )
    midnight = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC)
    start = midnight.timestamp() - 10 * DAY
    days = storefront_days(10, PER_DAY, flip_on=9, start=start)
    quiet, flipped = (dt.datetime.fromtimestamp(start + d * DAY, dt.UTC).date() for d in (8, 9))
    history = [e for day in days for e in day]
    produce_examples(s, history)

    # The champion: a version trained on the first days, promoted.
    store = open_store(s)
    training = Training(s.model, ManualClock(start))
    for offset, e in enumerate(e for day in days[:7] for e in day):
        training.learn(e, 0, offset)
    store.put(replace(training.snapshot(1), offsets={}, order=[]))  # trained away from the topic
    Registry(store).promote("ctr", 1)

    processes.start("archiver", "-m", "consumers.archiver")

    def archived() -> int:
        return int(connect(s.store_url).execute("SELECT count(*) FROM examples").fetchall()[0][0])

    wait_until(lambda: archived() == len(history), "ten days archived")
    # Today's traffic goes on, and the trainer has learned it all before the job runs.
    processes.start("trainer", "-m", "consumers.trainer")
    more = storefront_days(1, 300, flip_on=None, start=midnight.timestamp())[0]
    produce_examples(s, more)
    total = 7 * PER_DAY + len(history) + len(more)  # the champion's version began elsewhere
    wait_until(lambda: store.get("ctr").samples_seen == total, "the champion to learn it all")

    calm = report(quiet)
    assert calm["retrain"] is False and calm["triggers"] == []
    assert store.read_registry("ctr").challengers == []
    turned = report(flipped)
    assert turned["retrain"] is True, turned["triggers"]
    challenger = f"ctr-r{flipped:%Y%m%d}"
    assert store.read_registry("ctr").challengers == [challenger]
    backfilled = store.get(challenger)
    assert backfilled.samples_seen == PER_DAY  # the one most recent day
    root = Path(s.store_url.removeprefix("file://"))
    for day in (quiet, flipped):
        page = root / "events" / "reports" / "daily" / f"{day}.html"
        assert "Daily drift report: ctr" in page.read_text()

    # The alerts: on the alerts topic, and through the outbox to the webhook.
    sent = records(s, "alerts", Alert)
    assert sorted(a.rule for a in sent) == ["daily-report", "daily-report", "retraining"]
    assert all(a.severity == "info" for a in sent)
    receiver.start()
    outbox = Outbox(redis.Redis.from_url(s.redis_url), s.topic_prefix)
    _, stop, thread = courier(outbox, receiver.port)
    try:
        wait_until(lambda: len(receiver.accepted) == 3, "the alerts delivered")
    finally:
        stop.set()
        thread.join()
    summaries = [str(body["summary"]) for _, body in receiver.accepted]
    assert any(challenger in text and "learning live" in text for text in summaries)
    assert any(f"{flipped}.html" in text for text in summaries)

    # Live: the running trainer takes the challenger on from the backfill's offsets, reading
    # today's examples again for it; the champion does not learn them twice.
    wait_until(lambda: f"learning {challenger} live beside ctr" in processes.log("trainer"), "it")
    assert "read again from" in processes.log("trainer")
    topic_ends = ends(s)

    def caught_up() -> bool:
        latest = store.get(challenger)
        return latest.offsets == topic_ends and latest.samples_seen == PER_DAY + len(more)

    wait_until(caught_up, "the challenger to learn every later example once", every=2)
    more_still = storefront_days(1, 60, flip_on=None, start=midnight.timestamp() + 600)[0]
    produce_examples(s, more_still)
    wait_until(
        lambda: store.get("ctr").samples_seen == total + len(more_still),
        "the champion to learn the newest examples, and nothing twice",
    )
