"""Offline evaluation over an archive written by the archiver's own code: the figures equal
those computed directly, with independent code, from the same examples and models."""

from __future__ import annotations

import copy
import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import pytest

from streamlearn.archive_query import connect
from streamlearn.clock import ManualClock
from streamlearn.errors import ArchiveError
from streamlearn.evaluation import evaluate
from streamlearn.events import LabeledExample
from streamlearn.features import example_features
from streamlearn.learning import Learner, ModelSpec
from streamlearn.reports import evaluation_html
from streamlearn.simulation import Storefront
from streamlearn.training import Training
from tests.factories import DAY, T0, archive_examples, archive_of_examples, brute_auc

FIRST = dt.date(2025, 11, 29)


def learners() -> dict[int, Learner]:
    """Two versions of one lineage: after 50 examples of other traffic, and after 1,000; and
    a third with a spec of its own (hashed features), which scores with its own features."""
    made = Storefront(traffic_seed=11).labeled_examples(1000)
    a = Training(ModelSpec(), ManualClock(0.0))
    for i, e in enumerate(made[:50]):
        a.learn(e, 0, i)
    early = copy.deepcopy(a.learner)
    for i, e in enumerate(made[50:], start=50):
        a.learn(e, 0, i)
    hashed = Training(ModelSpec(encoding="hash", hash_features=256), ManualClock(0.0))
    for i, e in enumerate(made):
        hashed.learn(e, 0, i)
    return {1: early, 2: a.learner, 7: hashed.learner}


def test_the_figures_equal_those_computed_directly(tmp_path: Path) -> None:
    written = archive_of_examples(tmp_path)
    models = learners()
    ev = evaluate(connect(f"file://{tmp_path}"), "ctr", models, FIRST, FIRST + dt.timedelta(1))
    assert list(ev.days) == ["2025-11-29", "2025-11-30"]
    made = Storefront(traffic_seed=3).labeled_examples(300, start=T0 + 3600)
    by_day: dict[str, list[LabeledExample]] = {}
    for p, o, at in written:
        e = made[o * 2 + p]
        day = "2025-11-29" if at < T0 + DAY else "2025-11-30"
        by_day.setdefault(day, []).append(e)
    for version, model in models.items():
        every = []
        for day, examples in by_day.items():
            scored = [
                (model.predict_proba_one(example_features(model.spec, e)), e.label)
                for e in examples
            ]
            every += scored
            got = ev.days[day][version]
            n = len(scored)
            rate = sum(y for _, y in scored) / n
            mean = sum(p for p, _ in scored) / n
            loss = -sum(math.log(p) if y else math.log(1 - p) for p, y in scored) / n
            assert got.examples == n
            assert got.conversion_rate == pytest.approx(rate, abs=1e-12)
            assert got.log_loss == pytest.approx(loss, rel=1e-9)
            assert got.mean_score == pytest.approx(mean, rel=1e-12)
            assert got.calibration == pytest.approx(mean / rate, rel=1e-12)
            assert got.roc_auc == pytest.approx(brute_auc(scored), abs=1e-12)
        assert ev.period[version].examples == 300
        assert ev.period[version].roc_auc == pytest.approx(brute_auc(every), abs=1e-12)
        assert sum(b.examples for b in ev.curves[version]) == 300
    # The versions differ: the better trained one ranks better on this traffic.
    assert ev.period[2].roc_auc is not None and ev.period[1].roc_auc is not None
    assert ev.period[2].roc_auc > ev.period[1].roc_auc


def test_the_report_has_a_chart_per_figure_and_escapes_what_it_shows(tmp_path: Path) -> None:
    archive_of_examples(tmp_path)
    ev = evaluate(connect(f"file://{tmp_path}"), "ctr", learners(), FIRST, FIRST)
    page = evaluation_html(replace(ev, model="<script>alert(1)</script>"))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<svg") == 5  # AUC, log loss, calibration, conversion, reliability
    assert "v1 · 2025-11-29" in page  # a point's value on hover
    assert "http" not in page  # nothing fetched: it opens offline


def test_a_period_with_nothing_archived_is_an_error(tmp_path: Path) -> None:
    archive_of_examples(tmp_path)
    with pytest.raises(ArchiveError, match="no archived example"):
        day = dt.date(2024, 1, 1)
        evaluate(connect(f"file://{tmp_path}"), "ctr", learners(), day, day)


def test_provisional_negatives_are_left_out(tmp_path: Path) -> None:
    """An archive of label mode fnw (each impression a fake negative first, then its final
    label) evaluates as the archive of the final labels alone."""
    final = Storefront(traffic_seed=5).labeled_examples(400, start=T0 + 3600)
    as_fnw = []
    for e in final:
        as_fnw.append(e.model_copy(update={"label": False, "kind": "fake_negative"}))
        kind = "delayed_positive" if e.label else "real_negative"
        as_fnw.append(e.model_copy(update={"kind": kind, "weight": 1.0 if e.label else 0.0}))
    archive_examples(tmp_path / "final", final)
    archive_examples(tmp_path / "fnw", as_fnw)
    models = learners()
    final_ev, fnw_ev = (
        evaluate(connect(f"file://{tmp_path / d}"), "ctr", models, FIRST, FIRST)
        for d in ("final", "fnw")
    )
    assert final_ev.period == fnw_ev.period and final_ev.period[1].examples == 400
