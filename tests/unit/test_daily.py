"""The daily drift job's verdicts over archives of a served storefront (written by the
archiver's code): a day whose tastes turned over calls for retraining, a quiet one does not."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest

from streamlearn.archive_query import connect
from streamlearn.backfill import decoded
from streamlearn.clock import ManualClock
from streamlearn.daily import DailyPolicy, alerts, daily_report, retrain, triggers
from streamlearn.errors import ArchiveError
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.reports import daily_html
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.training import Training, TrainingPolicy
from tests.factories import archive_examples, storefront_days

START = dt.datetime(2026, 11, 19, tzinfo=dt.UTC)
DAYS = [(START + dt.timedelta(days=d)).date() for d in range(10)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten days of 1,500 examples; the tastes turn over as the tenth begins."""
    root = tmp_path_factory.mktemp("archive")
    days = storefront_days(10, 1500, flip_on=9, start=START.timestamp())
    archive_examples(root, [e for day in days for e in day])
    return root


def test_a_day_of_turned_tastes_calls_for_retraining_and_a_quiet_one_does_not(
    archive: Path,
) -> None:
    con = connect(f"file://{archive}")
    policy = DailyPolicy()
    quiet = daily_report(con, "ctr", None, {}, DAYS[8], policy)
    flipped = daily_report(con, "ctr", None, {}, DAYS[9], policy)
    assert (quiet.today.examples, quiet.before.examples) == (1500, 7 * 1500)
    assert quiet.today.by == "served" and quiet.today.scored == 1500
    assert quiet.retrain is False, quiet.triggers
    assert flipped.retrain is True and "served log loss" in flipped.triggers[0]
    assert flipped.log_loss_ratio is not None and quiet.log_loss_ratio is not None
    assert flipped.log_loss_ratio > 1.1 > quiet.log_loss_ratio
    # The features' distributions did not move (only what customers do with them did).
    assert {"prediction", "context.segment", "item.price"} <= set(flipped.psi)
    assert max(v for k, v in flipped.psi.items() if k != "prediction") < 0.1
    assert list(flipped.per_day) == [d.isoformat() for d in DAYS[2:10]]
    # Rules are configuration: a stricter ratio, and the flip no longer triggers.
    assert triggers(flipped, DailyPolicy(retrain_log_loss_ratio=3.0)) == []
    assert triggers(flipped, DailyPolicy(min_examples=10_000)) == []


def test_latent_drift_is_how_far_the_days_items_moved(archive: Path) -> None:
    con = connect(f"file://{archive}")
    spec = ModelSpec(learner={"kind": "fm", "n_factors": 4})
    training = Training(spec, ManualClock(0.0))
    lineage = {}
    rows = con.execute("SELECT dt FROM examples ORDER BY kafka_offset").fetchall()
    result = con.execute("SELECT * FROM examples ORDER BY kafka_offset")
    for (day,), (e, p, o) in zip(rows, decoded(result), strict=True):
        if str(day) == DAYS[2].isoformat() and "start" not in lineage:
            lineage["start"] = copy.deepcopy(training.learner)
        if str(day) == DAYS[9].isoformat() and "before" not in lineage:
            lineage["before"] = copy.deepcopy(training.learner)
        training.learn(e, p, o)
    lineage["after"] = training.learner
    versions = {"champion": training.learner, **lineage}
    report = daily_report(con, "ctr", 3, versions, DAYS[9], DailyPolicy())
    assert report.latent is not None
    assert report.latent.items > 100 and report.latent.mean_shift > 0
    assert report.latent.reference_mean_shift_per_day is not None
    # A day of turned tastes moves the items' factors more than a day of the reference did.
    assert report.latent.mean_shift > report.latent.reference_mean_shift_per_day


def test_retraining_backfills_a_challenger_once_and_names_it_in_the_registry(
    archive: Path, tmp_path: Path
) -> None:
    con = connect(f"file://{archive}")
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k" * 32, notices_poll_s=None)
    registry = Registry(store)
    policy = DailyPolicy()
    name, filled = retrain(
        con, registry, ModelSpec(), DAYS[9], policy, TrainingPolicy(), ManualClock(0.0)
    )
    assert name == "ctr-r20261128"
    assert filled is not None and filled.examples == 1500  # the one most recent day
    assert store.get(name).samples_seen == 1500
    assert store.read_registry("ctr").challengers == [name]
    again = retrain(con, registry, ModelSpec(), DAYS[9], policy, TrainingPolicy(), ManualClock(0.0))
    assert again == (name, None)  # once per day
    assert store.read_registry("ctr").challengers == [name]


def test_alerts_and_the_report_say_what_was_found(archive: Path) -> None:
    con = connect(f"file://{archive}")
    report = daily_report(con, "ctr", 4, {}, DAYS[9], DailyPolicy())
    report.link = "file:///reports/2026-11-28.html"
    made = alerts(report, ("ctr-r20261128", None), now=1.0)
    assert [a.rule for a in made] == ["daily-report", "retraining"]
    assert all(a.severity == "info" and a.status == "firing" for a in made)
    assert report.link in made[0].summary and "ctr-r20261128" in made[1].summary
    page = daily_html(report, 0.25)
    assert "Retraining: served log loss" in page and "context.segment" in page
    assert page.count("<svg") == 2
    with pytest.raises(ArchiveError, match="no archived example"):
        daily_report(con, "ctr", None, {}, dt.date(2020, 1, 1), DailyPolicy())
