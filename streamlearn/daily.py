"""The daily drift job: one day of the archive against a reference period before it.

For the champion of a model, :func:`daily_report` compares the day with the ``reference_days``
before it, from the event archive:

* **concept drift**: the served model's log loss and calibration (from the scores the API
  served, logged on every example; from the champion scoring now where none was logged), the
  day's against the reference's;
* **data drift**: the population stability index of every feature and of the prediction (the
  monitor's :class:`~streamlearn.drift.DataDrift`: reference deciles or top categories), on a
  reproducible sample of each period;
* **latent drift**, for a factorization machine with one-hot features: how far the latent
  factors of the items seen that day moved during the day (the champion's last version before
  the day against its last version of the day), beside how far they moved per day over the
  reference;
* **join health**: examples, conversion rate and dead letters per day, and the share of the
  day's impressions that became examples.

A :class:`DailyPolicy` rule says when the day calls for retraining (the served log loss up by a
ratio, calibration off by a margin, the prediction's PSI); :func:`retrain` then backfills a
fresh challenger of the champion's spec on the most recent days and names it in the model's
registry, where the trainer finds it and learns it live beside the champion. Whether it ever
serves is the promotion rules' decision, not this job's.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import duckdb
import numpy as np
from pydantic import Field

from streamlearn.alerting import Alert
from streamlearn.archive_query import final_labels
from streamlearn.backfill import Backfilled, backfill, decoded
from streamlearn.clock import Clock
from streamlearn.drift import DataDrift, FeatureProfile
from streamlearn.errors import ArchiveError
from streamlearn.events import ExampleRecord
from streamlearn.features import example_features
from streamlearn.learning import Learner, ModelSpec
from streamlearn.policy import Policy
from streamlearn.registry import Registry
from streamlearn.training import TrainingPolicy

EPS = 1e-15


class DailyPolicy(Policy):
    """When the daily drift job runs, what it compares, and when it retrains."""

    FLAT: ClassVar[dict[str, str]] = {
        "hour": "daily_report_hour",
        "reference_days": "daily_reference_days",
        "retrain_log_loss_ratio": "daily_retrain_log_loss_ratio",
        "retrain_days": "daily_retrain_days",
    }

    hour: int = Field(2, ge=0, le=23, description="UTC hour the job reports on yesterday.")
    reference_days: int = Field(7, ge=1, le=90, description="Days before the day it is held to.")
    sample_rows: int = Field(
        100_000, ge=1000, description="Examples per period sampled for PSI and latent drift."
    )
    psi_shift: float = Field(0.25, gt=0, description="A feature's PSI from here is a shift.")
    min_examples: int = Field(500, ge=1, description="Fewer examples in the day: no verdict.")
    retrain_log_loss_ratio: float | None = Field(
        1.1,
        gt=1,
        description="Retrain when the served log loss of the day is this many times "
        "the reference's (None: never for this).",
    )
    retrain_calibration_error: float | None = Field(
        None, gt=0, description="Retrain when |calibration - 1| of the day is above this."
    )
    retrain_psi_prediction: float | None = Field(
        None, gt=0, description="Retrain when the prediction's PSI is above this."
    )
    retrain_days: int = Field(
        1,
        ge=1,
        le=90,
        description="The recent days (the day and those before) a retrained "
        "challenger is backfilled on.",
    )


@dataclass(frozen=True)
class Served:
    """One period's figures of what was served."""

    days: int
    examples: int
    conversion_rate: float
    scored: int
    """Examples with a score: logged when served, or the champion's now (``by``)."""
    log_loss: float | None
    calibration: float | None
    dead_letters: int
    by: str


@dataclass(frozen=True)
class Latent:
    items: int
    mean_shift: float
    """Mean over the day's items of |v_after - v_before| / |v_before|."""
    reference_mean_shift_per_day: float | None
    moved_most: list[tuple[str, float]]


@dataclass
class DailyReport:
    model: str
    champion: int | None
    day: dt.date
    reference: tuple[dt.date, dt.date]
    today: Served
    before: Served
    psi: dict[str, float]
    latent: Latent | None
    per_day: dict[str, dict[str, float | None]]
    """Every day of the reference and the day: examples, conversion rate, log loss."""
    impressions_joined: float | None
    triggers: list[str] = field(default_factory=list)
    link: str = ""

    @property
    def retrain(self) -> bool:
        return bool(self.triggers)

    @property
    def log_loss_ratio(self) -> float | None:
        a, b = self.today.log_loss, self.before.log_loss
        return a / b if a is not None and b else None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["day"] = self.day.isoformat()
        out["reference"] = [d.isoformat() for d in self.reference]
        out["log_loss_ratio"] = self.log_loss_ratio
        out["retrain"] = self.retrain
        return out


def _period(start: dt.date, end: dt.date) -> list[str]:
    return [start.isoformat(), end.isoformat()]


def _served(
    con: duckdb.DuckDBPyConnection,
    start: dt.date,
    end: dt.date,
    rows: list[ExampleRecord],
    champion: Learner | None,
    champion_name: str,
) -> Served:
    """Exact figures over every archived example of the period (SQL), the loss and calibration
    from the served scores; from the champion's scores of the sample where none was logged."""
    period = _period(start, end)
    n, conversions, scored, loss, mean_score, scored_rate = con.execute(
        "SELECT count(*), coalesce(sum(label::INT), 0), count(served_score),"
        " avg(CASE WHEN label THEN -ln(greatest(served_score, ?))"
        "     ELSE -ln(greatest(1 - served_score, ?)) END),"
        " avg(served_score), avg(label::INT) FILTER (WHERE served_score IS NOT NULL)"
        f" FROM examples WHERE dt BETWEEN ? AND ? AND {final_labels(con)}",
        [EPS, EPS, *period],
    ).fetchall()[0]
    (letters,) = con.execute(
        "SELECT count(*) FROM dead_letters WHERE dt BETWEEN ? AND ?", period
    ).fetchall()[0]
    days = (end - start).days + 1
    by = "served"
    if not scored and champion is not None and rows:
        by = f"{champion_name} now"
        scores = [(score(champion, e), e.label) for e in rows]
        scored = len(scores)
        loss = sum(_loss(p, y) for p, y in scores) / scored
        mean_score = sum(p for p, _ in scores) / scored
        scored_rate = sum(1 for _, y in scores if y) / scored
    calibration = mean_score / scored_rate if scored and scored_rate else None
    return Served(
        days=days,
        examples=int(n),
        conversion_rate=conversions / n if n else 0.0,
        scored=int(scored),
        log_loss=float(loss) if scored else None,
        calibration=calibration,
        dead_letters=int(letters),
        by=by,
    )


def _loss(p: float, y: bool) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p) if y else -math.log(1 - p)


def score(learner: Learner, e: ExampleRecord) -> float:
    return learner.predict_proba_one(example_features(learner.spec, e))


def sample(
    con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date, rows: int
) -> list[ExampleRecord]:
    """Up to ``rows`` examples of the period, the same ones every time (a seeded reservoir)."""
    result = con.execute(
        f"SELECT * FROM (SELECT * FROM examples WHERE dt BETWEEN ? AND ? AND {final_labels(con)})"
        f" USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE (7)"
        " ORDER BY kafka_partition, kafka_offset",
        _period(start, end),
    )
    return [e for e, _, _ in decoded(result)]


def _features(e: ExampleRecord) -> dict[str, Any]:
    return {**{f"context.{k}": v for k, v in e.context.items()}} | {
        f"item.{k}": v for k, v in e.item_features.items()
    }


def data_drift(
    reference: list[ExampleRecord],
    today: list[ExampleRecord],
    champion: Learner | None,
) -> dict[str, float]:
    """PSI of every feature, and of the prediction (served scores, else the champion's)."""
    if not reference or not today:
        return {}
    out = DataDrift.reference([_features(e) for e in reference]).psi_by_feature(
        [_features(e) for e in today]
    )

    def predictions(rows: list[ExampleRecord]) -> list[float]:
        served = [e.served_score for e in rows if e.served_score is not None]
        if served or champion is None:
            return served
        return [score(champion, e) for e in rows]

    before, now = predictions(reference), predictions(today)
    if before and now:
        out["prediction"] = FeatureProfile.of(list(before)).psi(now)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _latents(learner: Learner) -> Mapping[str, Any] | None:
    final = learner.model[-1]
    latents = getattr(final, "latents", None)
    return latents if latents is not None and learner.spec.encoding == "onehot" else None


def _shifts(before: Learner, after: Learner, items: set[str]) -> dict[str, float]:
    a, b = _latents(before), _latents(after)
    if a is None or b is None:
        return {}
    out = {}
    for item in items:
        key = f"item_{item}"
        if key in a and key in b:
            v0, v1 = np.asarray(a[key]), np.asarray(b[key])
            out[item] = float(np.linalg.norm(v1 - v0) / (np.linalg.norm(v0) or 1.0))
    return out


def latent_drift(
    versions: Mapping[str, Learner | None], today: list[ExampleRecord], reference_days: int
) -> Latent | None:
    """``versions``: the champion's lineage at the reference's start, at the day's start and at
    its end (None where it had no version yet)."""
    start, before, after = versions.get("start"), versions.get("before"), versions.get("after")
    if before is None or after is None or _latents(after) is None:
        return None
    items = {e.item_id for e in today}
    day = _shifts(before, after, items)
    if not day:
        return None
    ref = _shifts(start, before, items) if start is not None else {}
    return Latent(
        items=len(day),
        mean_shift=sum(day.values()) / len(day),
        reference_mean_shift_per_day=sum(ref.values()) / len(ref) / reference_days if ref else None,
        moved_most=sorted(day.items(), key=lambda kv: -kv[1])[:10],
    )


def _per_day(
    con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date
) -> dict[str, dict[str, float | None]]:
    rows = con.execute(
        "SELECT dt, count(*), avg(label::INT),"
        " avg(CASE WHEN label THEN -ln(greatest(served_score, ?))"
        "     ELSE -ln(greatest(1 - served_score, ?)) END)"
        f" FROM examples WHERE dt BETWEEN ? AND ? AND {final_labels(con)}"
        " GROUP BY dt ORDER BY dt",
        [EPS, EPS, *_period(start, end)],
    ).fetchall()
    return {
        str(d): {"examples": float(n), "conversion_rate": rate, "log_loss": loss}
        for d, n, rate, loss in rows
    }


def _joined(con: duckdb.DuckDBPyConnection, day: dt.date) -> float | None:
    """Examples of the day over the impressions recommended that day (None without any)."""
    period = _period(day, day)
    (shown,) = con.execute(
        "SELECT coalesce(sum(json_array_length(items)), 0) FROM recommendations"
        " WHERE dt BETWEEN ? AND ?",
        period,
    ).fetchall()[0]
    (joined,) = con.execute(
        "SELECT count(DISTINCT example_id) FROM examples WHERE dt BETWEEN ? AND ?", period
    ).fetchall()[0]
    return joined / shown if shown else None


def daily_report(
    con: duckdb.DuckDBPyConnection,
    model: str,
    champion: int | None,
    versions: Mapping[str, Learner | None],
    day: dt.date,
    policy: DailyPolicy,
) -> DailyReport:
    """The day against the reference period before it. ``versions``: the champion's model
    (``"champion"``), and its lineage at the reference's start, the day's start and its end
    (``"start"``, ``"before"``, ``"after"``), each None where there is none."""
    start = day - dt.timedelta(days=policy.reference_days)
    end = day - dt.timedelta(days=1)
    (held,) = con.execute(
        "SELECT count(*) FROM examples WHERE dt BETWEEN ? AND ?", _period(start, day)
    ).fetchall()[0]
    if not held:
        raise ArchiveError(f"no archived example from {start} to {day}")
    learner = versions.get("champion")
    reference_rows = sample(con, start, end, policy.sample_rows)
    today_rows = sample(con, day, day, policy.sample_rows)
    report = DailyReport(
        model=model,
        champion=champion,
        day=day,
        reference=(start, end),
        today=_served(con, day, day, today_rows, learner, f"v{champion}"),
        before=_served(con, start, end, reference_rows, learner, f"v{champion}"),
        psi=data_drift(reference_rows, today_rows, learner),
        latent=latent_drift(versions, today_rows, policy.reference_days),
        per_day=_per_day(con, start, day),
        impressions_joined=_joined(con, day),
    )
    report.triggers = triggers(report, policy)
    return report


def triggers(report: DailyReport, policy: DailyPolicy) -> list[str]:
    """Which of the policy's retraining rules the day meets (none below ``min_examples``)."""
    if report.today.examples < policy.min_examples or not report.before.examples:
        return []
    out = []
    ratio, wants = report.log_loss_ratio, policy.retrain_log_loss_ratio
    if wants is not None and ratio is not None and ratio >= wants:
        out.append(
            f"served log loss {report.today.log_loss:.4f} is {ratio:.2f}x the reference's "
            f"{report.before.log_loss:.4f} (rule: {wants}x)"
        )
    calibration, margin = report.today.calibration, policy.retrain_calibration_error
    if margin is not None and calibration is not None and abs(calibration - 1) > margin:
        out.append(f"calibration {calibration:.3f} is off by more than {margin}")
    psi, most = report.psi.get("prediction"), policy.retrain_psi_prediction
    if most is not None and psi is not None and psi > most:
        out.append(f"prediction PSI {psi:.3f} above {most}")
    return out


def challenger_name(model: str, day: dt.date) -> str:
    return f"{model}-r{day:%Y%m%d}"[:64]


def retrain(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    spec: ModelSpec,
    day: dt.date,
    policy: DailyPolicy,
    training: TrainingPolicy,
    clock: Clock,
) -> tuple[str, Backfilled | None]:
    """A fresh challenger of ``spec`` backfilled on the ``retrain_days`` ending with ``day``,
    named in the model's registry so that the trainer learns it live. Once per model and day:
    a challenger already there is left as it is (None)."""
    name = challenger_name(spec.name, day)
    if registry.store.latest_version(name) is None:
        first = day - dt.timedelta(days=policy.retrain_days - 1)
        fresh = spec.model_copy(update={"name": name})
        filled: Backfilled | None = backfill(
            con, fresh, registry.store, training, clock, first, day
        )
    else:
        filled = None
    registry.add_challenger(spec.name, name)
    return name, filled


def alerts(
    report: DailyReport, retrained: tuple[str, Backfilled | None] | None, now: float
) -> list[Alert]:
    """An ``info`` alert with the report's link, and one announcing a retraining."""
    day = report.day.isoformat()
    ratio = report.log_loss_ratio
    verdict = "; ".join(report.triggers) or "no retraining rule met"
    out = [
        Alert(
            dedup_key=f"{report.model}/daily-report/{day}",
            sequence=1,
            status="firing",
            rule="daily-report",
            model=report.model,
            window="1d",
            metric="log_loss_ratio",
            severity="info",
            value=ratio if ratio is not None else 0.0,
            threshold=0.0,
            model_version=f"{report.model}:v{report.champion}" if report.champion else None,
            started_at=now,
            at=now,
            summary=f"{report.model}: daily drift report for {day} ({verdict}): {report.link}",
        )
    ]
    if retrained is not None:
        name, filled = retrained
        learned = f"backfilled on {filled.examples} examples" if filled else "already retrained"
        out.append(
            out[0].model_copy(
                update={
                    "dedup_key": f"{report.model}/retraining/{day}",
                    "rule": "retraining",
                    "summary": f"{report.model}: retraining after {day}: challenger {name} "
                    f"{learned}, now learning live beside the champion ({verdict})",
                }
            )
        )
    return out
