"""Offline evaluation: versions of a model scored on the archived examples of a period, without
learning, side by side per day; each impression once, by its final label (a label mode's
provisional negatives are left out).

Each version scores every example with its own spec's features (a version is judged as it
would have served). Per day and over the whole period: the examples, the conversion rate, the
exact ROC AUC (ranks, ties counted half), the log loss (scores clipped to [1e-15, 1 - 1e-15], as
River's), the mean score and the calibration (mean score over conversion rate: 1 is calibrated,
above 1 over-predicts), and over the period a reliability curve (ten equal-width score bins:
their mean score against their conversion rate).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import duckdb

from streamlearn.archive_query import final_labels
from streamlearn.backfill import decoded
from streamlearn.errors import ArchiveError, ConfigError, SnapshotNotFound
from streamlearn.features import example_features
from streamlearn.learning import Learner
from streamlearn.metrics import auc, columns, log_losses
from streamlearn.registry import Registry

BINS = 10


@dataclass(frozen=True)
class Figures:
    examples: int
    conversions: int
    conversion_rate: float
    roc_auc: float | None
    """None while one class is missing."""
    log_loss: float
    mean_score: float
    calibration: float | None
    """None without a conversion."""

    @classmethod
    def of(cls, scored: list[tuple[float, bool]]) -> Figures:
        n = len(scored)
        p, y = columns(scored)
        conversions = int(y.sum())
        rate = conversions / n if n else 0.0
        mean = float(p.mean()) if n else 0.0
        return cls(
            examples=n,
            conversions=conversions,
            conversion_rate=rate,
            roc_auc=auc(p, y) if 0 < conversions < n else None,
            log_loss=float(log_losses(p, y).mean()) if n else 0.0,
            mean_score=mean,
            calibration=mean / rate if rate else None,
        )


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    examples: int
    mean_score: float
    conversion_rate: float


def reliability(scored: list[tuple[float, bool]]) -> list[Bin]:
    """The non-empty bins of ten equal-width score bins."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for p, y in scored:
        bins[min(int(p * BINS), BINS - 1)].append((p, y))
    return [
        Bin(
            low=i / BINS,
            high=(i + 1) / BINS,
            examples=len(b),
            mean_score=sum(p for p, _ in b) / len(b),
            conversion_rate=sum(1 for _, y in b if y) / len(b),
        )
        for i, b in enumerate(bins)
        if b
    ]


@dataclass(frozen=True)
class Evaluation:
    model: str
    versions: list[int]
    start: dt.date
    end: dt.date
    days: dict[str, dict[int, Figures]]
    """Per day (ISO date), per version."""
    period: dict[int, Figures]
    curves: dict[int, list[Bin]]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: versions as string keys, as JSON objects need."""
        return {
            "model": self.model,
            "versions": self.versions,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "days": {d: {str(v): asdict(f) for v, f in by.items()} for d, by in self.days.items()},
            "period": {str(v): asdict(f) for v, f in self.period.items()},
            "reliability": {str(v): [asdict(b) for b in c] for v, c in self.curves.items()},
        }


def score(
    learners: Mapping[int, Learner], rows: Iterable[tuple[str, Any]]
) -> dict[int, dict[str, list[tuple[float, bool]]]]:
    """Per version, per day: (score, label) of each (day, example), no learning."""
    scored: dict[int, dict[str, list[tuple[float, bool]]]] = {v: {} for v in learners}
    for day, example in rows:
        for version, learner in learners.items():
            x = example_features(learner.spec, example)
            p = learner.predict_proba_one(x)
            scored[version].setdefault(day, []).append((p, bool(example.label)))
    return scored


def _day(at: float) -> str:
    """The archive's ``dt`` of a time: its UTC date."""
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()


def evaluate(
    con: duckdb.DuckDBPyConnection,
    model: str,
    learners: Mapping[int, Learner],
    start: dt.date,
    end: dt.date,
) -> Evaluation:
    """``learners`` (version: model) scored on the archived examples from ``start`` to ``end``,
    days by their examples' recommendation time (the archive's ``dt``)."""
    period = [start.isoformat(), end.isoformat()]
    final = final_labels(con)
    listed = con.execute(
        f"SELECT DISTINCT dt FROM examples WHERE dt BETWEEN ? AND ? AND {final} ORDER BY 1",
        period,
    ).fetchall()
    days = [str(d) for (d,) in listed]
    if not days:
        raise ArchiveError(f"no archived example from {start} to {end}")
    result = con.execute(
        f"SELECT * FROM examples WHERE dt BETWEEN ? AND ? AND {final}"
        " ORDER BY dt, kafka_partition, kafka_offset",
        period,
    )
    scored = score(learners, ((_day(e.recommendation_time), e) for e, _, _ in decoded(result)))
    return Evaluation(
        model=model,
        versions=list(learners),
        start=start,
        end=end,
        days={d: {v: Figures.of(scored[v].get(d, [])) for v in learners} for d in days},
        period={v: Figures.of([s for d in days for s in scored[v].get(d, [])]) for v in learners},
        curves={v: reliability([s for d in days for s in scored[v].get(d, [])]) for v in learners},
    )


def evaluate_versions(
    registry: Registry,
    con: duckdb.DuckDBPyConnection,
    model: str,
    versions: Iterable[str],
    start: dt.date,
    end: dt.date,
) -> Evaluation:
    """:func:`evaluate` of versions named by number or alias (the command's and the admin
    API's way in)."""
    if start > end:
        raise ConfigError(f"the period starts ({start}) after it ends ({end})")
    learners: dict[int, Learner] = {}
    for name in versions:
        version = registry.resolve(model, name)
        if version is None:
            raise SnapshotNotFound(f"model {model!r} has no version {name!r}")
        learners[version] = registry.store.get(model, version).model
    return evaluate(con, model, learners, start, end)
