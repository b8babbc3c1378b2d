"""Alert rules and alarms: when a metric's value makes a page, and when it stops.

A :class:`Rule` watches one metric (``roc_auc``, ``psi:<feature>``, ``label_rate``...) in one
window and says which side of a threshold is bad. An :class:`Alarms` book keeps, per stable dedup
key ``model/rule/window``, the state of that alarm and turns observed values into alerts:

* **fires once**: a bad value starts a pending period; only a value still bad ``for_s`` later
  fires (a single bad reading does not page);
* **hysteresis**: once firing, the alarm clears only when the value is past ``clear_threshold``
  (on the good side of the threshold), for ``clear_for_s``, so a value hovering at the threshold
  does not flap;
* **resolves once**: leaving the firing state emits one ``resolved`` alert with the same key.

Every alert carries a sequence number per dedup key, so a receiver (or the outbox) can order and
drop duplicates. The book is plain data (:meth:`Alarms.dump`, :meth:`Alarms.load`) so the monitor
keeps it in Redis: a restarted monitor neither pages again for an alarm already firing nor
forgets to resolve it.

>>> from streamlearn.clock import ManualClock
>>> clock = ManualClock(0.0)
>>> rule = Rule(name="auc-floor", metric="roc_auc", window="5m", bad="below",
...             threshold=0.6, clear_threshold=0.65, for_s=60, clear_for_s=60)
>>> book = Alarms([rule], clock)
>>> book.observe("ctr", "roc_auc", "5m", 0.55, version="ctr:v3")
[]
>>> clock.advance(61)
>>> [(a.status, a.dedup_key) for a in book.observe("ctr", "roc_auc", "5m", 0.52)]
[('firing', 'ctr/auc-floor/5m')]
>>> book.observe("ctr", "roc_auc", "5m", 0.62)  # better, but not past the clear threshold
[]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamlearn.clock import Clock

Severity = Literal["critical", "error", "warning", "info"]


class Rule(BaseModel):
    """One alerting rule, as declared in configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    metric: str = Field(
        description="What to watch: roc_auc, log_loss, calibration, conversion_rate, "
        "concept_drift, psi:<feature>, psi:prediction, label_rate, outcome_rate, "
        "watermark_lag_s... A trailing * matches many (psi:* is every feature's PSI), each "
        "its own alarm."
    )
    window: str = Field("5m", description="The metric's window (5m, 1h, 1d) or 'stream'.")
    bad: Literal["above", "below"] = Field(description="Which side of the threshold is bad.")
    threshold: float
    clear_threshold: float | None = Field(
        None, description="Where a firing alarm clears (hysteresis); default: the threshold."
    )
    for_s: float = Field(0.0, ge=0, description="How long the value must stay bad to fire.")
    clear_for_s: float = Field(0.0, ge=0, description="How long it must stay good to resolve.")
    severity: Severity = "error"

    @model_validator(mode="after")
    def _clear_on_the_good_side(self) -> Rule:
        c = self.clear_threshold
        if c is not None and (c > self.threshold if self.bad == "above" else c < self.threshold):
            raise ValueError(
                f"clear_threshold {c} must be on the good side of threshold {self.threshold} "
                f"(bad is {self.bad})"
            )
        return self

    def matches(self, metric: str) -> bool:
        if self.metric.endswith("*"):
            return metric.startswith(self.metric[:-1])
        return metric == self.metric

    def is_bad(self, value: float) -> bool:
        return value > self.threshold if self.bad == "above" else value < self.threshold

    def is_clear(self, value: float) -> bool:
        c = self.threshold if self.clear_threshold is None else self.clear_threshold
        return value <= c if self.bad == "above" else value >= c


class Alert(BaseModel):
    """A change of an alarm's state: what goes to the alerts topic and every webhook."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    dedup_key: str
    sequence: int = Field(description="Increases by one with every alert of this dedup key.")
    status: Literal["firing", "resolved"]
    rule: str
    model: str
    window: str
    metric: str
    severity: Severity
    value: float
    threshold: float
    model_version: str | None
    started_at: float = Field(description="When the alarm fired.")
    at: float
    summary: str


@dataclass
class _State:
    status: Literal["ok", "pending", "firing", "clearing"] = "ok"
    since: float = 0.0  # when the current status began
    fired_at: float = 0.0
    sequence: int = 0
    version: str | None = None


@dataclass
class Alarms:
    """The state of every alarm, and the alerts that changes of state make."""

    rules: list[Rule]
    clock: Clock
    states: dict[str, _State] = field(default_factory=dict)

    def observe(
        self, model: str, metric: str, window: str, value: float, version: str | None = None
    ) -> list[Alert]:
        """A new value of ``metric`` over ``window`` for ``model``: the alerts it makes."""
        out = []
        for rule in self.rules:
            if rule.matches(metric) and rule.window == window:
                alert = self._step(rule, model, metric, value, version)
                if alert is not None:
                    out.append(alert)
        return out

    def firing(self) -> list[str]:
        return sorted(k for k, s in self.states.items() if s.status in ("firing", "clearing"))

    def _step(
        self, rule: Rule, model: str, metric: str, value: float, version: str | None
    ) -> Alert | None:
        name = rule.name if metric == rule.metric else f"{rule.name}:{metric}"
        key = f"{model}/{name}/{rule.window}"
        s = self.states.setdefault(key, _State())
        now = self.clock.now()
        if version is not None:
            s.version = version
        bad, clear = rule.is_bad(value), rule.is_clear(value)
        if s.status == "ok" and bad:
            s.status, s.since = "pending", now
        elif s.status == "pending" and not bad:
            s.status, s.since = "ok", now
        elif s.status == "clearing" and not clear:
            s.status, s.since = "firing", now  # it went bad again before it had cleared
        elif s.status == "firing" and clear:
            s.status, s.since = "clearing", now
        if s.status == "pending" and now - s.since >= rule.for_s:
            s.status, s.since, s.fired_at = "firing", now, now
            return self._alert(key, s, rule, model, metric, value, "firing")
        if s.status == "clearing" and now - s.since >= rule.clear_for_s:
            s.status, s.since = "ok", now
            return self._alert(key, s, rule, model, metric, value, "resolved")
        return None

    def _alert(
        self,
        key: str,
        s: _State,
        rule: Rule,
        model: str,
        metric: str,
        value: float,
        status: Literal["firing", "resolved"],
    ) -> Alert:
        s.sequence += 1
        side = "above" if rule.bad == "above" else "below"
        summary = (
            f"{model}: {metric} over {rule.window} is {value:.4g}, {side} {rule.threshold:g}"
            if status == "firing"
            else f"{model}: {metric} over {rule.window} is back at {value:.4g}"
        )
        return Alert(
            dedup_key=key,
            sequence=s.sequence,
            status=status,
            rule=rule.name,
            model=model,
            window=rule.window,
            metric=metric,
            severity=rule.severity,
            value=value,
            threshold=rule.threshold,
            model_version=s.version,
            started_at=s.fired_at,
            at=self.clock.now(),
            summary=summary,
        )

    # ---- persistence: the monitor keeps this in Redis ------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {key: asdict(s) for key, s in self.states.items()}

    def load(self, doc: dict[str, Any]) -> None:
        self.states = {key: _State(**s) for key, s in doc.items()}


DEFAULT_RULES = (
    # The served model's loss rose (River's detector) and has not settled yet.
    Rule(
        name="concept-drift",
        metric="concept_drift",
        window="stream",
        bad="above",
        threshold=0.5,
        # Held a minute after the loss settles (Prometheus's keep_firing_for): one incident,
        # one page, even when the relearning loss wobbles at the end of it.
        clear_for_s=60,
        severity="critical",
    ),
    Rule(
        name="auc-floor",
        metric="roc_auc",
        window="5m",
        bad="below",
        threshold=0.55,
        clear_threshold=0.6,
        for_s=60,
        clear_for_s=60,
    ),
    # Any feature, or the prediction, far from the version's reference (PSI).
    Rule(
        name="data-drift",
        metric="psi:*",
        window="stream",
        bad="above",
        threshold=0.25,
        clear_threshold=0.1,
        severity="warning",
    ),
    Rule(
        name="outcomes-stopped",
        metric="outcome_rate",
        window="stream",
        bad="below",
        threshold=0.001,
        for_s=60,
        clear_for_s=30,
        severity="critical",
    ),
    # Outcomes that never found their recommendation (its grace ended): positives lost, as
    # when a producer partitions outcomes unlike recommendations.
    Rule(
        name="outcomes-unmatched",
        metric="unmatched_share",
        window="stream",
        bad="above",
        threshold=0.05,
        clear_threshold=0.02,
        for_s=60,
        severity="critical",
    ),
    Rule(
        name="positives-stopped",
        metric="positive_rate",
        window="stream",
        bad="below",
        threshold=0.0001,
        for_s=120,
        clear_for_s=30,
    ),
    Rule(
        name="watermark-stalled",
        metric="watermark_lag_s",
        window="stream",
        bad="above",
        threshold=300,
        clear_threshold=120,
        for_s=60,
    ),
)
