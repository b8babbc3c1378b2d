"""What the monitor computes from the labeled examples and the joiner's reports, without Kafka.

Per model, over its served stream whatever version served each example (``LabeledExample.
model_version``, ``<model>:v<n>``), from the score that was served and the label that came; this
is what the alarms judge, so a trainer that publishes a version every few seconds neither resets
nor splits them:

* rolling metrics in each event-time window (``5m``, ``1h``, ``1d`` by default): ROC AUC, log
  loss, calibration (mean predicted over observed rate), conversion rate, prediction mean and
  count; a window keeps at most ``max_examples`` (the newest), which bounds memory at high rates;
  the rules judge them once ``warmup_examples`` have been served;
* concept drift on the loss (:class:`~streamlearn.drift.ConceptDrift`) once ``warmup_examples``
  have set its level, as ``concept_drift`` in window ``stream``;
* data drift: the ``reference_size`` examples after the warm-up are the reference; then every
  ``drift_every`` examples the PSI of each feature and of the prediction over the last
  ``drift_window`` examples, as ``psi:<feature>`` and ``psi:prediction`` in window ``stream``.

When the registry's champion moves (a promotion or a rollback, :meth:`Monitor.on_champion`), the
drift detectors and the reference start again at the new champion's first example: the reference
is the window taken when the version was promoted, and a new model's different loss is no drift.
While no champion is set, the API serves the trainer's newest version, which changes what it
predicts and which items it shows as it learns; then the reference is renewed from the last
``drift_window`` examples every ``reference_renew_examples``, so a sudden shift pages and the
shifted distribution becomes the new normal (0: never renewed).

The same rolling metrics per served version, for the charts and Prometheus only: the
``max_versions`` most recently served are kept.

From the joiners' reports, for model ``join``, over every joiner that reported in the last
``JOINER_GONE_AFTER_S`` (each reports only its own partitions; rates from each one's counter
changes between its last two reports, summed): ``label_rate`` (positives per labeled example),
``outcome_rate``, ``positive_rate``, ``recommendation_rate`` and ``example_rate`` per second,
``late_share``, ``coverage``, ``pending_windows`` and ``watermark_lag_s`` (the worst partition);
``unmatched_share``, over every worker's latest counters: the outcomes that never found their
recommendation, of all outcomes; and ``forwarded_share``, likewise: the input records found off
their user's partition and forwarded through a repartition topic, of all input records (what
producers that do not partition as the join does cost).

Every value goes through the :class:`~streamlearn.alerting.Alarms` book, which turns them into
alerts; :meth:`Monitor.snapshot` is what the monitor writes to Redis and Prometheus. The names in
double backquotes above are the fields of :class:`MonitorPolicy`, the monitor's settings.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field

from streamlearn.alerting import DEFAULT_RULES, Alarms, Alert, Rule
from streamlearn.clock import Clock
from streamlearn.drift import ConceptDrift, DataDrift
from streamlearn.events import JoinReport, Slate
from streamlearn.evidence import (
    Decision,
    Evidence,
    Gate,
    LoggedSlate,
    PromotionRule,
    WindowEvidence,
    slate_terms,
)
from streamlearn.joining import JoinPolicy
from streamlearn.metrics import DELAYED, IN_TIME, LATE, ROW, Rolling, log_losses
from streamlearn.policy import Policy
from streamlearn.webhooks import Webhook

WINDOWS = {"5m": 300.0, "1h": 3600.0, "1d": 86400.0}
JOIN = "join"
MIN_OUTCOMES_JUDGED = 100  # fewer outcomes say too little about the share left unmatched
JOINER_GONE_AFTER_S = 60.0  # a joiner silent this long has stopped; its partitions moved on


class Example(Protocol):
    """The fields of a labeled example the monitor reads."""

    @property
    def model_version(self) -> str | None: ...
    @property
    def served_score(self) -> float | None: ...
    @property
    def label(self) -> bool: ...
    @property
    def recommendation_time(self) -> float: ...
    @property
    def context(self) -> dict[str, float | bool | str]: ...
    @property
    def item_features(self) -> dict[str, float | bool | str]: ...
    @property
    def kind(self) -> str | None: ...
    @property
    def correction(self) -> bool: ...


@dataclass
class _Version:
    windows: Rolling
    seen: int = 0
    last_at: float = 0.0  # event time of its newest example


@dataclass
class _Stream:
    """A model's served stream, whichever version served each example."""

    windows: Rolling
    concept: ConceptDrift
    recent: deque[Example]  # the last ``drift_window`` examples
    version: str = ""  # the newest example's version tag
    reference: list[Example] = field(default_factory=list)
    drift: DataDrift | None = None
    # Each feature's bin codes of the examples in ``recent`` under ``drift``'s profiles, in a
    # ring (a PSI counts them, in any order): an example is binned once, not once per PSI; the
    # codes are made again whenever ``drift`` changes, so they are always those its profiles
    # give.
    codes: dict[str, Any] = field(default_factory=dict)
    written: int = 0  # codes written to the rings since they were made
    seen: int = 0
    psi: dict[str, float] = field(default_factory=dict)
    rebaseline_at: str | None = None  # a new champion's tag: drift restarts at its first example
    reference_at: int = 0  # ``seen`` when the reference was taken

    def restart_drift(self, concept: ConceptDrift) -> None:
        self.concept, self.drift, self.rebaseline_at = concept, None, None
        self.reference, self.psi, self.codes = [], {}, {}
        self.recent.clear()

    def set_reference(self, drift: DataDrift) -> None:
        self.drift, self.codes, self.written = drift, {}, 0
        self.bin(list(self.recent))

    def bin(self, examples: list[Example]) -> None:
        assert self.drift is not None and self.recent.maxlen is not None
        size = self.recent.maxlen
        examples = examples[-size:]
        at = np.arange(self.written, self.written + len(examples)) % size
        columns = _Columns(examples)
        for name, profile in self.drift.profiles.items():
            ring = self.codes.get(name)
            if ring is None:
                ring = self.codes[name] = np.full(size, -1)
            ring[at] = profile.codes(columns.values(name))
        self.written += len(examples)


class MonitorPolicy(Policy):
    """What the monitor measures, how it judges it, and where it pages."""

    FLAT: ClassVar[dict[str, str]] = {
        "evaluate_s": "monitor_evaluate_s",
        "reference_size": "monitor_reference_size",
        "recovery_examples": "monitor_recovery_examples",
        "warmup_examples": "monitor_warmup_examples",
        "reference_renew_examples": "monitor_reference_renew_examples",
        "max_versions": "monitor_max_versions",
        "metrics_port": "monitor_metrics_port",
        "lease_s": "monitor_lease_s",
        "rules": "monitor_rules",
        "webhooks": "webhooks",
        "auto_action": "auto_action",
        "auto_action_rules": "auto_action_rules",
        "alert_link": "alert_link",
    }

    rules: list[Rule] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="Alerting rules (metric, window, threshold, clear threshold, for how long).",
    )
    webhooks: list[Webhook] = Field(
        default_factory=list, description="Where alerts go besides the alerts topic."
    )
    evaluate_s: float = Field(
        5.0, gt=0, description="How often rolling metrics are evaluated and published."
    )
    windows: dict[str, float] = Field(
        default_factory=lambda: dict(WINDOWS), description="Rolling windows: name -> seconds."
    )
    max_examples: int = Field(
        50_000, ge=1, description="The newest examples a rolling window keeps (bounds memory)."
    )
    reference_size: int = Field(
        2000, ge=100, description="A version's first examples: its data-drift reference."
    )
    drift_window: int = Field(2000, ge=1, description="Examples the PSI is computed over.")
    drift_every: int = Field(500, ge=1, description="Examples between two PSI computations.")
    detector: Literal["adwin", "page_hinkley"] = Field(
        "adwin", description="River's detector of concept drift on the loss."
    )
    recovery_examples: int = Field(
        2000, ge=1, description="Examples without a new detection before concept drift clears."
    )
    warmup_examples: int = Field(
        10_000,
        ge=0,
        description="A model's first served examples (and a new champion's) only set the level "
        "that concept drift is judged against; no rule judges the model's windows (AUC, loss, "
        "calibration...) before its first served examples are this many.",
    )
    reference_renew_examples: int = Field(
        20_000,
        ge=0,
        description="While no champion is set (the API follows the trainer), the data-drift "
        "reference is renewed from the latest examples this often (0: never).",
    )
    max_versions: int = Field(
        20, ge=1, description="Served versions whose own rolling metrics are kept (newest)."
    )
    metrics_port: int = Field(
        9110, ge=0, le=65535, description="Prometheus endpoint of the monitor (0: off)."
    )
    lease_s: float = Field(
        15.0,
        gt=0,
        description="The monitor's lease in Redis: one monitor acts, the others stand by and "
        "take over this long after it stops renewing (a crash; a clean stop hands over at once).",
    )
    auto_action: Literal["off", "rollback"] = Field(
        "off",
        description="rollback: when an alarm of AUTO_ACTION_RULES fires, point the model's "
        "champion back at its previous version (and say so in an alert).",
    )
    auto_action_rules: list[str] = Field(
        default_factory=lambda: ["concept-drift"], description="The rules that trigger it."
    )
    evidence_alpha: float = Field(
        0.05, gt=0, lt=1, description="1 minus the confidence of the off-policy bounds."
    )
    evidence_min_propensity: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="Slates with a rarer logged choice are left out of the off-policy "
        "estimates (counted): the bound on an inverse-propensity weight that the finite-sample "
        "bounds need (5% exploration over the API's 500 candidates at most).",
    )
    evidence_target_slates: int = Field(
        10_000,
        ge=10,
        description="The slate count at which the off-policy bounds are tuned to be tightest.",
    )
    promotion: PromotionRule = Field(
        default_factory=PromotionRule,
        description="Automatic promotion on off-policy evidence (off by default): a challenger "
        "is served under the champion's name once proven better, and stepped back from once "
        "proven worse than what it replaced.",
    )
    alert_link: str = Field(
        "http://127.0.0.1:8000/docs",
        description="Where an alert's link points; {model} and {version} are filled in.",
    )


class Monitor:
    def __init__(self, policy: MonitorPolicy, clock: Clock, join: JoinPolicy | None = None) -> None:
        self.policy = policy
        self.join_policy = join or JoinPolicy()
        self.alarms = Alarms(list(policy.rules), clock)
        self.streams: dict[str, _Stream] = {}
        self.versions: dict[str, _Version] = {}
        self.champions: dict[str, int | None] = {}
        self.unscored = 0
        self.provisional = 0  # fake negatives: their impression's final label comes later
        self.delayed = 0  # delayed positives: final labels that followed a fake negative
        # Label maturity, by bucket of recommendation time: the final labels read, and (from
        # the joiners' latest reports) the impressions whose final label is still to come.
        self.finals: Counter[int] = Counter()
        self.unlabeled: Counter[int] = Counter()
        self.maturity_until: float | None = None  # the least watermark of the live joiners
        # Off-policy evidence per model, over the slates logged since the champion last moved;
        # and each serving version's ranking figures per window.
        self.evidence: dict[str, Evidence] = {}
        self.evidence_windows: dict[str, dict[str, WindowEvidence]] = {}
        self.evidence_skipped = 0  # slates with a choice rarer than evidence_min_propensity
        self.ranking: dict[str, dict[str, SlateWindow]] = {}
        # The model the API serves (under the champion's name), and the gate that judges the
        # challengers' evidence against it.
        self.serving: str | None = None
        self.gate = Gate(policy.promotion, clock)
        self.join: dict[str, float] = {}
        self._last_reports: dict[str, JoinReport] = {}
        # Per joiner: its counters' changes over its last two reports, and the seconds between.
        self._join_deltas: dict[str, tuple[float, dict[str, int]]] = {}

    def configure(self, policy: MonitorPolicy, join: JoinPolicy | None = None) -> None:
        """Today's policies for a monitor restored from a saved state: its rules and bounds
        apply from now on, to the alarms and metrics it keeps."""
        self.policy = policy
        self.join_policy = join or self.join_policy
        self.alarms.rules = list(policy.rules)
        self.gate.rule = policy.promotion

    def _rolling(self) -> Rolling:
        return Rolling(self.policy.max_examples, self.join_policy.late_policy == "correct")

    def _metrics(
        self, rolling: Rolling, settled_by: float = math.inf
    ) -> dict[str, dict[str, float]]:
        return {w: rolling.metrics(span, settled_by) for w, span in self.policy.windows.items()}

    def settled_by(self) -> float:
        """The newest recommendation time whose impressions all have their final label: one
        label delay before the newest recommendation any stream has seen. (Measured from the
        whole stream's newest, not a version's own: a version retired sooner than the label delay
        after it started serving still settles.)"""
        newest = max((st.windows.newest for st in self.streams.values()), default=-math.inf)
        return newest - self.label_delay_s

    @property
    def label_delay_s(self) -> float:
        """How long after its recommendation an impression's negative label comes."""
        return self.join_policy.window_s + self.join_policy.allowed_lateness_s

    # ---- examples -----------------------------------------------------------------------------

    def on_example(self, e: Example) -> list[Alert]:
        return self.on_examples([e])

    def on_examples(self, examples: Sequence[Example]) -> list[Alert]:
        """Update with examples, oldest first; the alerts of the stream-wide signals they move,
        as one at a time would make them. Only final labels count (label modes fnw and observe
        emit a provisional negative first)."""
        by_model: dict[str, list[Example]] = {}
        models: dict[str | None, str] = {}  # by version tag
        finals = []
        provisional = delayed = unscored = 0
        for e in examples:
            kind = e.kind
            if kind == "fake_negative":
                provisional += 1
                continue
            if not e.correction:
                finals.append(e.recommendation_time)
                delayed += kind == "delayed_positive"
            if e.served_score is None:
                unscored += 1  # nothing to judge the served model by
                continue
            tag = e.model_version
            model = models.get(tag)
            if model is None:
                model = models[tag] = (tag or "unversioned").split(":")[0]
                by_model.setdefault(model, [])
            by_model[model].append(e)
        self.provisional += provisional
        self.delayed += delayed
        self.unscored += unscored
        self._finalized(finals)
        alerts = []
        for model, chosen in by_model.items():
            alerts += self._on_stream(model, chosen)
        return alerts

    def _on_stream(self, model: str, examples: list[Example]) -> list[Alert]:
        tags = [e.model_version or "unversioned" for e in examples]
        st = self.streams.get(model)
        if st is None:
            st = self.streams[model] = _Stream(
                self._rolling(), self._concept(), deque(maxlen=self.policy.drift_window)
            )
        if st.recent.maxlen != self.policy.drift_window:  # configured anew since
            st.recent = deque(st.recent, maxlen=self.policy.drift_window)
            if st.drift is not None:
                st.set_reference(st.drift)
        # A new champion's first example restarts drift there: the rest is another chunk.
        if st.rebaseline_at in tags:
            cut = tags.index(st.rebaseline_at)
            if cut:
                return self._on_stream(model, examples[:cut]) + self._on_stream(
                    model, examples[cut:]
                )
            st.restart_drift(self._concept())
        rows = np.array(
            [
                (
                    e.recommendation_time,
                    e.served_score,
                    e.label,
                    LATE if e.correction else DELAYED if e.kind == "delayed_positive" else IN_TIME,
                )
                for e in examples
            ],
            ROW,
        )
        p, y = rows["p"], rows["y"]
        self._by_version(tags, rows)
        st.windows.extend(rows)
        seen0, concept_seen0 = st.seen, st.concept.seen
        st.seen += len(examples)
        st.version = tags[-1]
        alerts = []
        for i, value in st.concept.update_many(log_losses(p, y).tolist()):
            alerts += self.alarms.observe(model, "concept_drift", "stream", value, tags[i])
        alerts += self.alarms.observe(model, "concept_drift", "stream", st.concept.value, tags[-1])
        return alerts + self._data_drift(model, st, examples, tags, seen0, concept_seen0)

    def _data_drift(
        self,
        model: str,
        st: _Stream,
        examples: list[Example],
        tags: list[str],
        seen0: int,
        concept_seen0: int,
    ) -> list[Alert]:
        """The reference and the PSI over ``examples``, the ``seen0 + 1``-th of the stream
        onwards, in runs between the examples where something is due: the reference is full
        or renewed, or a PSI is computed."""
        policy, alerts = self.policy, []
        j, n = 0, len(examples)
        while j < n:
            if st.drift is None:
                # Not while a new model is still settling: from its ``warmup + 1``-th example.
                j = max(j, policy.warmup_examples - concept_seen0)
                taken = examples[j : j + policy.reference_size - len(st.reference)]
                st.reference += taken
                j += len(taken)
                if len(st.reference) >= policy.reference_size:
                    st.set_reference(_reference(st.reference))
                    st.reference, st.reference_at = [], seen0 + j
                continue
            # The next example (by index) that completes a PSI's stride, or renews the reference.
            due = j + (-(seen0 + j + 1)) % policy.drift_every
            renew_at = n
            if policy.reference_renew_examples and self.champions.get(model) is None:
                renew_at = max(j, st.reference_at + policy.reference_renew_examples - seen0 - 1)
            end = min(due, renew_at, n - 1)
            run = examples[j : end + 1]
            st.recent.extend(run)
            st.bin(run)
            if end == renew_at:
                st.set_reference(_reference(list(st.recent)))
                st.reference_at = seen0 + end + 1
            if end == due and len(st.recent) >= policy.drift_window:
                st.psi = {
                    name: profile.psi_of_codes(st.codes[name])
                    for name, profile in st.drift.profiles.items()
                }
                for feature, value in st.psi.items():
                    alerts += self.alarms.observe(
                        model, f"psi:{feature}", "stream", value, tags[end]
                    )
            j = end + 1
        return alerts

    def _concept(self) -> ConceptDrift:
        p = self.policy
        return ConceptDrift(p.detector, p.recovery_examples, warmup=p.warmup_examples)

    def _finalized(self, recommendation_times: list[float]) -> None:
        times = np.fromiter(recommendation_times, "f8", len(recommendation_times))
        buckets = self.join_policy.buckets(times)
        if len(buckets) and (buckets == buckets[0]).all():  # the usual batch: one bucket
            self.finals[int(buckets[0])] += len(buckets)
        else:
            values, counts = np.unique(buckets, return_counts=True)
            self.finals.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
        if len(self.finals) > 6 * (self.join_policy.maturity_buckets + 3):
            keep = max(self.finals) - 3 * (self.join_policy.maturity_buckets + 3)
            for old in [b for b in self.finals if b < keep]:
                del self.finals[old]

    def maturity(self) -> list[dict[str, float]]:
        """Per bucket of recommendation time, newest last, over two attribution windows and two
        buckets more: the impressions (final labels read plus those the joiners hold without
        one) and the share with their final label. In window mode the newest buckets fill as
        positives come and jump to 1 as windows close; in fnw and observe, delayed positives
        fill them. Only buckets the joiners' watermarks have passed (at their last reports):
        a newer one holds recommendations they had not read when they counted. Exact once the
        monitor has read what the joiners had emitted when they reported; between the two, a
        label emitted since counts twice, briefly."""
        buckets = set(self.finals) | set(self.unlabeled)
        if not buckets or self.maturity_until is None:
            return []
        last = min(max(buckets), self.join_policy.bucket(self.maturity_until) - 1)
        out = []
        for b in range(last - 2 * self.join_policy.maturity_buckets - 1, last + 1):
            final, open_ = self.finals.get(b, 0), self.unlabeled.get(b, 0)
            if final + open_:
                out.append(
                    {
                        "start": self.join_policy.bucket_start(b),
                        "impressions": float(final + open_),
                        "final": float(final),
                        "share": final / (final + open_),
                    }
                )
        return out

    def _by_version(self, tags: list[str], rows: Any) -> None:
        """Each version's own rolling metrics, for the charts (runs of one version at a time)."""
        cuts = [i for i in range(1, len(tags)) if tags[i] != tags[i - 1]]
        for start, end in zip([0, *cuts], [*cuts, len(tags)], strict=True):
            tag = tags[start]
            v = self.versions.get(tag)
            if v is None:
                if len(self.versions) >= self.policy.max_versions:  # served longest ago goes
                    del self.versions[min(self.versions, key=lambda k: self.versions[k].last_at)]
                v = self.versions[tag] = _Version(self._rolling())
            v.windows.extend(rows[start:end])
            v.seen += end - start
            v.last_at = max(v.last_at, float(rows["t"][start:end].max()))

    # ---- slates ----------------------------------------------------------------------------

    def on_slate(self, slate: Slate) -> None:
        """A closed slate: the serving version's ranking figures, and every model whose scores
        it logged replayed over it (IPS, SNIPS, DR)."""
        tag = slate.model_version or "unversioned"
        windows = self.ranking.get(tag)
        if windows is None:
            if len(self.ranking) >= self.policy.max_versions:  # the one served longest ago goes
                del self.ranking[min(self.ranking, key=lambda k: self._newest(self.ranking[k]))]
            windows = self.ranking[tag] = {
                w: SlateWindow(span) for w, span in self.policy.windows.items()
            }
        for window in windows.values():
            window.add(slate)
        if not (slate.scores and slate.candidates and slate.epsilon):
            return  # not logged for replay: no exploration, or no candidates and scores
        if min(i.propensity for i in slate.shown) < self.policy.evidence_min_propensity:
            self.evidence_skipped += 1
            return
        logged = LoggedSlate(
            tuple(slate.candidates),
            tuple(i.item_id for i in slate.shown),
            tuple(i.propensity for i in slate.shown),
            tuple(float(i.converted) for i in slate.shown),
        )
        for version, scores in slate.scores.items():
            model = version.split(":")[0]
            evidence = self.evidence.get(model)
            if evidence is None:
                evidence = self.evidence[model] = Evidence(
                    self.policy.evidence_min_propensity,
                    self.policy.evidence_alpha,
                    target_slates=self.policy.evidence_target_slates,
                )
            terms = slate_terms(logged, dict(zip(slate.candidates, scores, strict=True)))
            evidence.update(terms)
            by_window = self.evidence_windows.get(model)
            if by_window is None:
                by_window = self.evidence_windows[model] = {
                    w: WindowEvidence(span, self.policy.max_examples)
                    for w, span in self.policy.windows.items()
                }
            for estimates in by_window.values():
                estimates.add(slate.event_time, terms)

    @staticmethod
    def _newest(windows: dict[str, SlateWindow]) -> float:
        return max((w.newest for w in windows.values()), default=0.0)

    def on_champion(self, model: str, version: int | None) -> None:
        """The registry's champion of ``model`` as read now; a move restarts drift detection."""
        before = self.champions.get(model, version)  # the first reading is no move
        self.champions[model] = version
        st = self.streams.get(model)
        if version is None or version == before or st is None:
            return
        if self.serving in (None, model):
            self._restart_evidence()  # another logging policy: the evidence starts again
        st.rebaseline_at = f"{model}:v{version}"
        if st.version == st.rebaseline_at:  # its examples are already coming
            st.restart_drift(self._concept())

    def on_serving(self, model: str) -> None:
        """The model the API serves as read now from the registry (a challenger promoted
        across names, or back): another logging policy, so the evidence starts again, and the
        newly served model's drift detection too."""
        before, self.serving = self.serving, model
        if before is None or before == model:
            return
        self._restart_evidence()
        st = self.streams.get(model)
        if st is not None:
            st.restart_drift(self._concept())

    def _restart_evidence(self) -> None:
        self.evidence.clear()
        self.gate.ahead_since.clear()

    def judge(self) -> Decision | None:
        """The promotion gate's decision on the evidence now, when the rule is enabled."""
        if not self.policy.promotion.enabled or self.serving is None:
            return None
        return self.gate.judge(self.serving, self.evidence)

    def evaluate(self) -> list[Alert]:
        """The rolling metrics of every model and window through the rules."""
        alerts = []
        for model, st in self.streams.items():
            # Again on the clock, so a held alarm resolves when the examples pause.
            alerts += self.alarms.observe(model, "concept_drift", "stream", st.concept.value)
            if st.seen < self.policy.warmup_examples:
                # A young stream's windows pool its first, barely trained versions' scores: a
                # floor on their AUC would page for the learning, not for a fault.
                continue
            for window, metrics in self._metrics(st.windows).items():
                if metrics["count"] < 50:  # too few to judge
                    continue
                for name, value in metrics.items():
                    alerts += self.alarms.observe(model, name, window, value, st.version)
        return alerts

    # ---- the join -----------------------------------------------------------------------------

    def on_join_report(self, report: JoinReport) -> list[Alert]:
        last = self._last_reports.get(report.worker)
        self._last_reports[report.worker] = report
        if last is not None and report.at > last.at:
            d = {k: report.counters.get(k, 0) - last.counters.get(k, 0) for k in report.counters}
            self._join_deltas[report.worker] = (report.at - last.at, d)
        # The joiners reporting now, each for its own partitions: the figures are over all of
        # them, whichever reported last.
        live = {
            w: r for w, r in self._last_reports.items() if r.at >= report.at - JOINER_GONE_AFTER_S
        }
        health = [h for r in live.values() for h in r.partitions.values()]
        self.unlabeled = Counter()
        for h in health:
            self.unlabeled.update(h.unlabeled)
        watermarks = [h.watermark for h in health if h.watermark and math.isfinite(h.watermark)]
        self.maturity_until = min(watermarks, default=None)
        lags = [h.watermark_lag_s for h in health if h.watermark_lag_s]
        self.join["watermark_lag_s"] = max(lags, default=0.0)
        self.join["pending_windows"] = float(sum(h.pending_impressions for h in health))
        positives = sum(r.counters.get("positives", 0) for r in live.values())
        eventual = positives + sum(
            r.counters.get("late_positive_impressions", 0) for r in live.values()
        )
        if eventual:
            self.join["coverage"] = positives / eventual
        # Over every joiner's latest counters: an outcome one worker never matches (its
        # recommendation went to another partition) is lost to all of them.
        outcomes = sum(r.counters.get("outcomes", 0) for r in self._last_reports.values())
        if outcomes >= MIN_OUTCOMES_JUDGED:
            unmatched = sum(
                r.counters.get("unmatched_outcomes", 0) for r in self._last_reports.values()
            )
            self.join["unmatched_share"] = unmatched / outcomes
        read = sum(
            r.counters.get("outcomes", 0) + r.counters.get("recommendations", 0)
            for r in self._last_reports.values()
        )
        if read:
            forwarded = sum(
                sum(g.values()) for r in self._last_reports.values() for g in r.forwarded.values()
            )
            self.join["forwarded_share"] = forwarded / read
        deltas = [self._join_deltas[w] for w in live if w in self._join_deltas]
        if deltas:

            def rate(*names: str) -> float:
                return sum(sum(d.get(n, 0) for n in names) / dt for dt, d in deltas)

            def total(name: str) -> int:
                return sum(d.get(name, 0) for _, d in deltas)

            self.join["outcome_rate"] = rate("outcomes")
            self.join["recommendation_rate"] = rate("recommendations")
            self.join["example_rate"] = rate("positives", "negatives")
            self.join["positive_rate"] = rate("positives")
            if labeled := total("positives") + total("negatives"):
                self.join["label_rate"] = total("positives") / labeled
            if total("outcomes"):
                self.join["late_share"] = total("late_outcomes") / total("outcomes")
        alerts = []
        for name, value in self.join.items():
            alerts += self.alarms.observe(JOIN, name, "stream", value)
        return alerts

    # ---- what is published --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every figure, for Redis (the API and the dashboard read it) and Prometheus."""
        settled_by = self.settled_by()
        return {
            "models": {
                model: {
                    "version": st.version,
                    "seen": st.seen,
                    "windows": self._metrics(st.windows),
                    "concept_drift": st.concept.value,
                    "drift_detections": st.concept.detections,
                    "psi": st.psi,
                }
                for model, st in self.streams.items()
            },
            "versions": {
                # Over settled impressions only: a version's window young enough to be mostly
                # unsettled holds its fast positives and not yet its negatives, and its figures
                # would start as a spike that is no fault of the version. (The served stream's
                # windows, which the rules judge, keep every example: the share unsettled is
                # the same from one evaluation to the next.)
                tag: {"seen": v.seen, "windows": self._metrics(v.windows, settled_by)}
                for tag, v in self.versions.items()
            },
            "join": dict(self.join),
            "unscored_examples": self.unscored,
            "provisional_examples": self.provisional,
            "delayed_positive_examples": self.delayed,
            "maturity": self.maturity(),
            "evidence": {model: e.figures() for model, e in self.evidence.items()},
            "evidence_windows": {
                model: {w: e.figures() for w, e in windows.items()}
                for model, windows in self.evidence_windows.items()
            },
            "evidence_skipped_slates": self.evidence_skipped,
            "serving": self.serving,
            "ranking": {
                tag: {w: r.metrics() for w, r in windows.items()}
                for tag, windows in self.ranking.items()
            },
            "firing": self.alarms.firing(),
        }


def history_point(snapshot: Mapping[str, Any], window: str = "5m") -> dict[str, Any]:
    """The part of a snapshot the dashboard charts over time: each model's and version's figures
    in one window, the join's, and the alarms firing."""
    return {
        "at": snapshot.get("at"),
        "models": {
            model: {
                **m["windows"].get(window, {}),
                "seen": m["seen"],
                "concept_drift": m["concept_drift"],
            }
            for model, m in snapshot["models"].items()
        },
        "versions": {
            tag: {**v["windows"].get(window, {}), "seen": v["seen"]}
            for tag, v in snapshot["versions"].items()
        },
        "join": snapshot["join"],
        "firing": snapshot["firing"],
        "evidence": snapshot.get("evidence", {}),
    }


@dataclass
class SlateWindow:
    """A serving version's slates of the last ``span`` seconds of event time: its ranking
    against what customers did. ``ctr_at_1``: conversions in the top slot per slate;
    ``ctr_at_k``: per slot shown; ``ndcg_at_k``: the slate's order against its conversions
    (slates with one at least); ``value_per_impression``: the outcomes' value per slot."""

    span: float
    # (event time, slots, top converted, conversions, NDCG or NaN, value)
    items: deque[tuple[float, int, int, int, float, float]] = field(default_factory=deque)
    newest: float = 0.0

    def add(self, slate: Slate) -> None:
        shown = sorted(slate.shown, key=lambda i: i.position)
        gain = sum(1.0 / math.log2(slot + 2) for slot, i in enumerate(shown) if i.converted)
        converted = sum(i.converted for i in shown)
        ideal = sum(1.0 / math.log2(slot + 2) for slot in range(converted))
        ndcg = gain / ideal if converted else math.nan
        value = sum(i.value for i in shown)
        top = int(shown[0].converted)
        self.items.append((slate.event_time, len(shown), top, converted, ndcg, value))
        self.newest = max(self.newest, slate.event_time)
        while self.items and self.items[0][0] < self.newest - self.span:
            self.items.popleft()

    def metrics(self) -> dict[str, float]:
        n = len(self.items)
        if not n:
            return {"slates": 0.0}
        slots = sum(i[1] for i in self.items)
        ndcgs = [i[4] for i in self.items if not math.isnan(i[4])]
        return {
            "slates": float(n),
            "ctr_at_1": sum(i[2] for i in self.items) / n,
            "ctr_at_k": sum(i[3] for i in self.items) / slots,
            "ndcg_at_k": sum(ndcgs) / len(ndcgs) if ndcgs else 0.0,
            "value_per_impression": sum(i[5] for i in self.items) / slots,
        }


def _reference(examples: list[Example]) -> DataDrift:
    """The data-drift profiles of the examples' features and predictions, named ``c:<context
    feature>``, ``i:<item feature>`` and ``prediction``."""
    names = {f"c:{k}" for e in examples for k in e.context}
    names |= {f"i:{k}" for e in examples for k in e.item_features}
    columns = {n: _Columns(examples).values(n) for n in [*names, "prediction"]}
    # Booleans as numbers: True and 1.0 are one value.
    return DataDrift.of(
        {
            n: [float(v) if isinstance(v, bool) else v for v in c if v is not None]
            for n, c in columns.items()
        }
    )


class _Columns:
    """The features of many examples, one at a time by name (None where absent; booleans as
    they came)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples
        self._contexts: list[dict[str, float | bool | str]] | None = None
        self._items: list[dict[str, float | bool | str]] | None = None

    def values(self, name: str) -> list[Any]:
        if name == "prediction":
            return [e.served_score for e in self.examples]
        prefix, key = name.split(":", 1)
        if prefix == "c":
            if self._contexts is None:
                self._contexts = [e.context for e in self.examples]
            return list(map(dict.get, self._contexts, repeat(key)))
        if self._items is None:
            self._items = [e.item_features for e in self.examples]
        return list(map(dict.get, self._items, repeat(key)))
