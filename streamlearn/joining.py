"""The attribution-window join: recommendations x outcomes -> one labeled example per impression.

Pure logic, no Kafka: the joiner process feeds it records and ticks and sends what it returns.
All state lives in a ``MutableMapping[str, Any]`` of JSON-able values: in production a
:class:`JoinState`, whose changes the joiner writes to a changelog topic in the same transaction
as the offsets and examples they go with (so a restarted joiner resumes with every open window),
and in unit tests a plain dict. Values are reassigned, never mutated in place, because only an
assignment reaches the changelog.

Semantics
---------
* An impression is a recommendation x one item of its slate. Its window is
  ``[recommendation.event_time, recommendation.event_time + window]`` in event time.
* Matching: by ``recommendation_id``; when an outcome has none and ``match_by_user_item`` is on,
  to the most recent open impression of that user for that item.
* A qualifying outcome has a kind in ``positive_kinds`` and an event time inside the window.
  With ``combine="earliest"`` the positive is emitted when the first one arrives and later ones
  are duplicates. With ``combine="sum_value"`` every qualifying outcome adds its value, and the
  positive is emitted when the window closes, weighted by the sum (1 if the sum is 0).
* A negative is emitted for every impression without a qualifying outcome once the partition's
  watermark has passed the window's end.
* Watermark, per partition: the least, over the inputs (recommendations, outcomes) that are
  not idle, of the input's newest event time less ``allowed_lateness``. An input is idle once it
  has been read to its end (the reader says so with :meth:`Joiner.on_caught_up`) and then stays
  silent for ``idle_timeout`` of wall time; an idle input holds nothing back, as Flink's
  idleness, so outcomes that stopped hours of event time before the recommendations do not hold
  those hours open. When every input is idle, the watermark advances with the wall clock from
  the newest event time seen. An input with records still unread is never idle, however long
  it has been since the last one was read: after a restart, a stall of this process or a slow
  fetch, its backlog may hold outcomes for open windows, so a backlog of outcomes holds windows
  open until it is read. The watermark never moves back.
* Forwarded records: the joiner process sends a record found on a partition other than its
  user's (see :mod:`streamlearn.partitioning`) through a repartition topic to the worker that
  owns the user's partition. Each repartition topic is one more input of the watermark, so
  records still in transit hold windows open like a backlog; one that has never carried a
  record for the partition holds nothing, so producers that partition as the join does wait
  for nothing.
* Out of order: an outcome naming a recommendation not seen yet waits until the watermark passes
  its event time plus ``early_grace``; then it is counted unmatched and dropped.
* Late: a qualifying outcome after the window (by event time, or for a window already closed) is
  counted late. ``late_policy="drop"`` drops it; ``"correct"`` emits a correction example
  (label True, ``correction=True``) for an impression that closed negative, once, after its
  negative. Coverage is positives / (positives + impressions that got only a late positive).
* Duplicates make no second label: a replayed recommendation (window open, or closed within
  ``dedup_retention``), the same outcome again, a second outcome under ``earliest``.
* Slates: when a window closes, the recommendation is also handed out once as a
  :class:`~streamlearn.events.Slate`, every slot with its final label (:meth:`Joiner.take_slates`),
  for the monitor's ranking figures and off-policy estimates.

The policy names above are the fields of :class:`JoinPolicy` (``window`` is ``window_s``, each
duration in seconds with an ``_s``), composed into the settings as the ``join`` section.

State keys: ``r/<id>`` open recommendation, ``c/<id>`` closed marker kept for ``dedup_retention``
after the window ends, ``e/<id>`` early outcomes, ``u/<user>/<item>`` latest open impression
(matching by user and item), ``w/<partition>`` watermark.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from streamlearn.clock import Clock
from streamlearn.events import (
    ExampleKind,
    LabeledExample,
    Outcome,
    OutcomeKind,
    Recommendation,
    ShownItem,
    Slate,
)
from streamlearn.policy import Policy

Input = Literal["recommendations", "outcomes"]
# The watermark's inputs: each input topic, and its repartition topic (upper case), where records
# another worker found on the wrong partition come from.
SOURCES = ("r", "o", "R", "O")
# A repartition topic is written in other workers' transactions: what one of them forwarded just
# before it crashed stays invisible to read_committed readers until the broker aborts the
# transaction (its timeout, 10 s, checked every 10 s). Reading to the end of such a topic proves
# less than of an input, so its silence counts as idleness only this much later.
FORWARDED_IDLE_EXTRA_S = 20.0


class JoinPolicy(Policy):
    """How recommendations and outcomes are joined, and the joiner process's cadence."""

    FLAT: ClassVar[dict[str, str]] = {
        "window_s": "attribution_window_s",
        "allowed_lateness_s": "allowed_lateness_s",
        "idle_timeout_s": "idle_timeout_s",
        "early_grace_s": "early_outcome_grace_s",
        "positive_kinds": "positive_kinds",
        "combine": "combine",
        "late_policy": "late_policy",
        "match_by_user_item": "match_by_user_item",
        "label_mode": "label_mode",
        "observe_s": "observe_s",
        "dedup_retention_s": "dedup_retention_s",
        "maturity_buckets": "maturity_buckets",
        "tick_s": "joiner_tick_s",
        "commit_s": "joiner_commit_s",
        "stats_s": "joiner_stats_s",
        "purge_s": "joiner_repartition_purge_s",
        "call_timeout_s": "joiner_call_timeout_s",
        "metrics_port": "joiner_metrics_port",
    }

    window_s: float = Field(30.0, gt=0, description="How long an outcome may follow.")
    allowed_lateness_s: float = Field(
        2.0, ge=0, description="How far the watermark trails the newest event time seen."
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="After this long without events the watermark follows wall time."
    )
    early_grace_s: float = Field(
        30.0, ge=0, description="How long an outcome waits for a recommendation it names."
    )
    positive_kinds: frozenset[OutcomeKind] = Field(
        frozenset(get_args(OutcomeKind)), description="Outcome kinds that make a positive."
    )
    combine: Literal["earliest", "sum_value"] = Field(
        "earliest",
        description="earliest: positive at the first qualifying outcome; sum_value: positive "
        "when the window closes, weighted by the sum of the outcomes' values.",
    )
    late_policy: Literal["drop", "correct"] = Field(
        "drop", description="correct: emit a correction example for a late positive."
    )
    match_by_user_item: bool = Field(
        False, description="Match outcomes without recommendation_id by (user_id, item_id)."
    )
    label_mode: Literal["window", "fnw", "observe"] = Field(
        "window",
        description="window: a positive at the first qualifying outcome, a negative when the "
        "window closes; fnw: every impression at once as a (fake) negative, and a duplicate "
        "positive when it converts (Ktena et al. 2019); observe: a positive when it converts "
        "within observe_s, else a (fake) negative at observe_s and a delayed positive if it "
        "converts later in the window (ES-DFM, Yang et al. 2021).",
    )
    observe_s: float = Field(
        5.0,
        gt=0,
        description="The observation window of label_mode observe (shorter than the "
        "attribution window).",
    )
    dedup_retention_s: float = Field(
        600.0, gt=0, description="How long a closed window is remembered, for dedup and late."
    )
    maturity_buckets: int = Field(
        12,
        ge=1,
        le=1440,
        description="The label-maturity view splits an attribution window's span of "
        "recommendation time into this many buckets.",
    )
    # The joiner process's cadence.
    tick_s: float = Field(1.0, gt=0, description="How often idle windows are checked.")
    commit_s: float = Field(
        0.1, gt=0, description="How often the joiner commits a transaction (as Kafka Streams)."
    )
    stats_s: float = Field(5.0, gt=0, description="How often join stats are published.")
    purge_s: float = Field(
        30.0,
        gt=0,
        description="How often forwarded records already joined are deleted from the "
        "repartition topics (Kafka Streams' repartition.purge.interval.ms).",
    )
    call_timeout_s: float = Field(
        30.0,
        gt=0,
        description="The timeout of the joiner's transactional calls (sending offsets, "
        "committing); one that has not returned 5 s after it is given up as hung, and the "
        "transaction aborted by a new producer.",
    )
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Prometheus /metrics of the joiner; 0 turns it off."
    )

    @model_validator(mode="after")
    def _modes_that_work(self) -> JoinPolicy:
        if self.label_mode != "window" and self.combine != "earliest":
            raise ValueError(f"label_mode {self.label_mode} needs combine earliest")
        if self.label_mode == "observe" and self.observe_s >= self.window_s:
            raise ValueError(
                f"observe_s ({self.observe_s}) must be shorter than window_s ({self.window_s})"
            )
        return self

    def bucket(self, recommendation_time: float) -> int:
        """The label-maturity bucket of an impression (its index since the epoch)."""
        return int(recommendation_time // (self.window_s / self.maturity_buckets))

    def buckets(self, recommendation_times: Any) -> Any:
        """:meth:`bucket` of a numpy column of times, at once (numpy's float floor division is
        Python's).

        >>> import numpy as np
        >>> policy, times = JoinPolicy(window_s=60, maturity_buckets=6), [0.0, 9.999, 10.0, -0.5]
        >>> policy.buckets(np.array(times)).tolist() == [policy.bucket(t) for t in times]
        True
        """
        return np.floor_divide(recommendation_times, self.window_s / self.maturity_buckets).astype(
            "i8"
        )

    def bucket_start(self, bucket: int) -> float:
        return bucket * self.window_s / self.maturity_buckets


def _counter(help_text: str) -> Any:
    return field(default=0, metadata={"help": help_text})


@dataclass
class JoinStats:
    """Counters since this process started (Prometheus counters: they reset on restart)."""

    recommendations: int = _counter("Recommendation events read")
    impressions: int = _counter("Impressions (recommendation x item shown) opened")
    outcomes: int = _counter("Outcome events read")
    positives: int = _counter("Positive examples emitted")
    negatives: int = _counter("Negative examples emitted")
    corrections: int = _counter("Correction examples emitted for late positives")
    fake_negatives: int = _counter("Provisional negatives emitted (label modes fnw, observe)")
    delayed_positives: int = _counter("Positives emitted after the impression's fake negative")
    late_outcomes: int = _counter("Qualifying outcomes after their window")
    late_positive_impressions: int = _counter("Impressions whose only qualifying outcome was late")
    unmatched_outcomes: int = _counter("Outcomes matching no impression")
    duplicate_outcomes: int = _counter("Outcomes that would have labeled an impression twice")
    duplicate_recommendations: int = _counter("Replayed recommendations dropped")
    ignored_outcomes: int = _counter("Outcomes of kinds that are not positive")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(JoinStats)}

    @property
    def coverage(self) -> float | None:
        """Share of eventual positives that landed inside their window."""
        eventual = self.positives + self.late_positive_impressions
        return self.positives / eventual if eventual else None


@dataclass
class Joiner:
    policy: JoinPolicy
    state: MutableMapping[str, Any]
    clock: Clock
    stats: JoinStats = field(default_factory=JoinStats)
    # In memory, per partition: a min-heap of (when, key) of everything that can expire, checked
    # against the state when popped, and the count of open impressions. Built by one scan of the
    # state the first time a partition is seen (after a restart or a rebalance), then kept up.
    _due: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    _pending: dict[int, int] = field(default_factory=dict)
    # Per partition and maturity bucket: impressions whose final label is still to come.
    _unlabeled: dict[int, Counter[int]] = field(default_factory=dict)
    # When this process last saw each input of a partition advance, and since when the reader
    # has had nothing more to read from it. In memory on purpose: after a restart, the time the
    # joiner was down must not count as the inputs being idle, or the watermark would jump past
    # the backlog it has yet to read.
    _advanced_at: dict[tuple[int, str], float] = field(default_factory=dict)
    _caught_up_at: dict[tuple[int, str], float] = field(default_factory=dict)
    # Slates closed since the caller last took them (take_slates), in closing order.
    _slates: list[Slate] = field(default_factory=list)

    # ---- inputs -------------------------------------------------------------------------------

    def on_recommendation(
        self, rec: Recommendation, partition: int, forwarded: bool = False
    ) -> list[LabeledExample]:
        self.stats.recommendations += 1
        self._observe(partition, _source("recommendations", forwarded), rec.event_time)
        rid = rec.recommendation_id
        if f"r/{rid}" in self.state or f"c/{rid}" in self.state:
            self.stats.duplicate_recommendations += 1
            return []
        self.stats.impressions += len(rec.items)
        pending: dict[str, Any] = {
            "p": partition,
            "end": rec.event_time + self.policy.window_s,
            "rec": rec.model_dump(mode="json"),
            "pos": {},  # item -> [time, kind, value] of its qualifying outcome(s)
            "late": {},  # item -> [time, kind, value] of an outcome after the window's end
        }
        out: list[LabeledExample] = []
        if self.policy.label_mode == "fnw":
            out.extend(self._fake_negatives(pending, 0.0))
        elif self.policy.label_mode == "observe":
            pending["obs"] = rec.event_time + self.policy.observe_s
        early = self.state.pop(f"e/{rid}", None)
        if early is not None:
            for raw in early["outcomes"]:
                example = self._apply(pending, Outcome.model_validate(raw))
                if example is not None:
                    out.append(example)
        self.state[f"r/{rid}"] = pending
        if self.policy.match_by_user_item:
            for item in rec.items:
                self.state[f"u/{rec.user_id}/{item.item_id}"] = {"p": partition, "rid": rid}
        if self._schedule(partition, pending["end"], f"r/{rid}"):
            self._pending[partition] += len(rec.items)
            # Early outcomes that converted an item have taken it off already (in _apply).
            self._unlabeled[partition][self.policy.bucket(rec.event_time)] += len(rec.items)
        if "obs" in pending:
            self._schedule(partition, pending["obs"], f"o/{rid}")
        out.extend(self._expire(partition))
        return out

    def on_outcome(
        self, outcome: Outcome, partition: int, forwarded: bool = False
    ) -> list[LabeledExample]:
        self.stats.outcomes += 1
        self._observe(partition, _source("outcomes", forwarded), outcome.event_time)
        rid = outcome.recommendation_id
        if rid is None and self.policy.match_by_user_item:
            latest = self.state.get(f"u/{outcome.user_id}/{outcome.item_id}")
            rid = latest["rid"] if latest is not None else None
        if rid is None:
            self.stats.unmatched_outcomes += 1
            return []
        key = f"r/{rid}"
        pending = self.state.get(key)
        if pending is not None:
            example = self._apply(pending, outcome)
            self.state[key] = pending
            return [example] if example is not None else []
        closed = self.state.get(f"c/{rid}")
        if closed is not None:
            return self._late_after_close(rid, closed, outcome)
        if outcome.recommendation_id is None:  # matched through the index, but nothing open
            self.stats.unmatched_outcomes += 1
            return []
        early = self.state.get(f"e/{rid}") or {"p": partition, "until": 0.0, "outcomes": []}
        until = max(early["until"], outcome.event_time + self.policy.early_grace_s)
        self.state[f"e/{rid}"] = {
            "p": partition,
            "until": until,
            "outcomes": [*early["outcomes"], outcome.model_dump(mode="json")],
        }
        self._schedule(partition, until, f"e/{rid}")
        return []

    def on_caught_up(self, partition: int, input: Input, forwarded: bool = False) -> None:
        """The reader has read all there is of this input partition (of its repartition topic
        when ``forwarded``): from now until its next record, silence is idleness."""
        self._caught_up_at.setdefault((partition, _source(input, forwarded)), self.clock.now())

    def on_stalled(self) -> None:
        """The reader itself stopped reading for a while (this process paused, or a commit the
        broker was slow to answer): an input it had read to its end before may have grown
        since, so its silence counts as idleness again only from now. Without this, the wall
        time of the stall would count as the inputs' silence, and the watermark would jump past
        windows whose outcomes are waiting unread."""
        now = self.clock.now()
        for key in self._caught_up_at:
            self._caught_up_at[key] = now

    def on_tick(self, partition: int) -> list[LabeledExample]:
        """Let wall time advance an idle partition's watermark, and close what it passes."""
        return self._expire(partition)

    def forget_partitions(self) -> None:
        """After a rebalance: what this process knew of partitions may be stale."""
        self._due.clear()
        self._pending.clear()
        self._unlabeled.clear()
        self._advanced_at.clear()
        self._caught_up_at.clear()

    # ---- watermark ----------------------------------------------------------------------------

    def watermark(self, partition: int) -> float | None:
        w = self.state.get(f"w/{partition}")
        return None if w is None else self._watermark_of(partition, w)

    def _watermark_of(self, partition: int, w: dict[str, Any]) -> float:
        now = self.clock.now()
        lateness, idle = self.policy.allowed_lateness_s, self.policy.idle_timeout_s
        active, idle_inputs = [], []
        for source in SOURCES:
            newest = w.get(source)
            if newest is None and source.isupper():
                # Nothing ever forwarded here: producers that partition as the join does pay
                # no wait. Once something has been, the repartition topic holds the watermark
                # like any input, across restarts too (its newest time is in the state).
                continue
            wall = self._advanced_at.setdefault((partition, source), now)
            caught_up = self._caught_up_at.get((partition, source))
            wait = idle + FORWARDED_IDLE_EXTRA_S if source.isupper() else idle
            idle_for = -wait if caught_up is None else now - max(wall, caught_up) - wait
            if idle_for <= 0:
                # Not idle: it holds the watermark, at minus infinity while never seen.
                active.append(float("-inf") if newest is None else newest - lateness)
            elif newest is not None:
                idle_inputs.append((newest, idle_for))
        if active:
            candidate = min(active)  # an idle input holds nothing back (Flink's idleness)
        elif idle_inputs:
            # Every input idle: from the newest event time seen, at wall-clock speed since the
            # last of them went idle.
            newest = max(n for n, _ in idle_inputs)
            candidate = newest - lateness + min(f for _, f in idle_inputs)
        else:
            candidate = float("-inf")
        # ``wm`` is None until the watermark first becomes finite (JSON has no -Infinity).
        reached = float("-inf") if w["wm"] is None else w["wm"]
        return float(max(reached, candidate))

    def watermark_lag(self, partition: int) -> float | None:
        wm = self.watermark(partition)
        return None if wm is None else self.clock.now() - wm

    def _observe(self, partition: int, source: str, event_time: float) -> None:
        key = f"w/{partition}"
        w = self.state.get(key) or {"wm": None}
        newest = w.get(source)
        advancing = newest is None or event_time > newest
        if not advancing and (partition, source) not in self._caught_up_at:
            return
        # A record, even an old one, ends the input's idleness: freeze what the watermark had
        # reached, idle advance included, so that it never moves back.
        frozen = self._watermark_of(partition, w)
        self._caught_up_at.pop((partition, source), None)
        if advancing:
            self._advanced_at[(partition, source)] = self.clock.now()
        self.state[key] = {
            **w,
            source: event_time if advancing else newest,
            "wm": frozen if frozen > float("-inf") else None,
        }

    # ---- internals ----------------------------------------------------------------------------

    def _schedule(self, partition: int, when: float, key: str) -> bool:
        """Remember when ``key`` may expire; False when the partition is not indexed yet (its
        first expiry pass will find the key in the state)."""
        due = self._due.get(partition)
        if due is None:
            return False
        heapq.heappush(due, (when, key))
        return True

    def _index(self, partition: int) -> None:
        """One scan of the state: the partition's expiry heap and open impressions."""
        due: list[tuple[float, str]] = []
        pending = 0
        unlabeled: Counter[int] = Counter()
        retention = self.policy.dedup_retention_s
        for key, value in self.state.items():
            if key[0] not in "rce" or value["p"] != partition:
                continue
            if key[0] == "r":
                due.append((value["end"], key))
                pending += len(value["rec"]["items"])
                unlabeled[self.policy.bucket(value["rec"]["event_time"])] += self._unlabeled_of(
                    value
                )
                if "obs" in value and "neg" not in value:  # observation window still open
                    due.append((value["obs"], f"o/{key[2:]}"))
            elif key[0] == "c":
                due.append((value["end"] + retention, key))
            else:
                due.append((value["until"], key))
        heapq.heapify(due)
        self._due[partition] = due
        self._pending[partition] = pending
        self._unlabeled[partition] = unlabeled

    def _unlabeled_of(self, pending: dict[str, Any]) -> int:
        """An open window's impressions without their final label: all of them under
        ``sum_value`` (labeled when it closes), else those not converted yet."""
        converted = len(pending["pos"]) if self.policy.combine == "earliest" else 0
        return len(pending["rec"]["items"]) - converted

    def _apply(self, pending: dict[str, Any], outcome: Outcome) -> LabeledExample | None:
        """An outcome for an open window; mutates ``pending``, the caller stores it."""
        if outcome.kind not in self.policy.positive_kinds:
            self.stats.ignored_outcomes += 1
            return None
        rec = pending["rec"]
        item = next((i for i in rec["items"] if i["item_id"] == outcome.item_id), None)
        if item is None:
            self.stats.unmatched_outcomes += 1
            return None
        iid = outcome.item_id
        if outcome.event_time > pending["end"]:
            self.stats.late_outcomes += 1
            if iid not in pending["pos"] and iid not in pending["late"]:
                late = [outcome.event_time, outcome.kind, outcome.value]
                pending["late"] = {**pending["late"], iid: late}
            return None
        seen = pending["pos"].get(iid)
        if self.policy.combine == "sum_value":
            # Every qualifying outcome adds its value; emitted when the window closes.
            first = seen or [outcome.event_time, outcome.kind, 0.0]
            pending["pos"] = {**pending["pos"], iid: [first[0], first[1], first[2] + outcome.value]}
            return None
        if seen is not None:
            self.stats.duplicate_outcomes += 1
            return None
        pending["pos"] = {**pending["pos"], iid: [outcome.event_time, outcome.kind, outcome.value]}
        self.stats.positives += 1
        if (unlabeled := self._unlabeled.get(pending["p"])) is not None:
            unlabeled[self.policy.bucket(rec["event_time"])] -= 1
        if iid in pending.get("neg", ()):
            self.stats.delayed_positives += 1
            return _example(rec, item, pending["pos"][iid], kind="delayed_positive")
        return _example(rec, item, pending["pos"][iid], kind="immediate")

    def _late_after_close(
        self, rid: str, closed: dict[str, Any], outcome: Outcome
    ) -> list[LabeledExample]:
        if outcome.kind not in self.policy.positive_kinds:
            self.stats.ignored_outcomes += 1
            return []
        iid = outcome.item_id
        if iid in closed["pos"] or iid in closed["late"]:
            self.stats.duplicate_outcomes += 1
            return []
        self.stats.late_outcomes += 1
        self.stats.late_positive_impressions += 1
        self.state[f"c/{rid}"] = {**closed, "late": [*closed["late"], iid]}
        rec = closed.get("rec")  # kept only under late_policy="correct"
        if rec is None:
            return []
        item = next((i for i in rec["items"] if i["item_id"] == iid), None)
        if item is None:
            return []
        self.stats.corrections += 1
        late = [outcome.event_time, outcome.kind, outcome.value]
        return [_example(rec, item, late, correction=True, kind="delayed_positive")]

    def _expire(self, partition: int) -> list[LabeledExample]:
        wm = self.watermark(partition)
        if wm is None:
            return []
        if partition not in self._due:
            self._index(partition)
        due = self._due[partition]
        retention = self.policy.dedup_retention_s
        out: list[LabeledExample] = []
        while due and due[0][0] <= wm:
            _, key = heapq.heappop(due)
            if key[0] == "o":  # an observation window ends: fake negatives for the rest
                open_ = self.state.get(f"r/{key[2:]}")
                if open_ is not None and "neg" not in open_:
                    out.extend(self._fake_negatives(open_, self.policy.observe_s))
                    self.state[f"r/{key[2:]}"] = open_
                continue
            value = self.state.get(key)
            if value is None:
                continue  # already gone: a stale entry
            if key[0] == "r":
                bucket = self.policy.bucket(value["rec"]["event_time"])
                unlabeled = self._unlabeled[partition]
                unlabeled[bucket] -= self._unlabeled_of(value)
                if not unlabeled[bucket]:
                    del unlabeled[bucket]
                out.extend(self._close(key[2:], value))
                self._pending[partition] -= len(value["rec"]["items"])
                heapq.heappush(due, (value["end"] + retention, f"c/{key[2:]}"))
            elif key[0] == "c":
                del self.state[key]
            elif value["until"] <= wm:  # early outcomes still waiting for their recommendation
                self.stats.unmatched_outcomes += len(value["outcomes"])
                del self.state[key]
            else:  # a later outcome extended the wait
                heapq.heappush(due, (value["until"], key))
        return out

    def take_slates(self) -> list[Slate]:
        """The slates whose windows closed since the last call: the caller sends them with the
        examples those calls returned, in the same transaction."""
        out, self._slates = self._slates, []
        return out

    def _close(self, rid: str, pending: dict[str, Any]) -> list[LabeledExample]:
        rec, pos = pending["rec"], pending["pos"]
        self._slates.append(_slate(rec, pos))
        out: list[LabeledExample] = []
        late = [i for i in pending["late"] if i not in pos]
        summed = self.policy.combine == "sum_value"
        for item in rec["items"]:
            iid = item["item_id"]
            if summed and iid in pos:
                out.append(_example(rec, item, pos[iid], weighted=True, kind="immediate"))
                self.stats.positives += 1
            elif iid not in pos:
                # Learned already as a fake negative: the final label only, not to be learned.
                learned = iid in pending.get("neg", ())
                window = self.policy.window_s
                out.append(_example(rec, item, None, kind="real_negative", elapsed=window))
                if learned:
                    out[-1] = out[-1].model_copy(update={"weight": 0.0})
                self.stats.negatives += 1
                if iid in late and self.policy.late_policy == "correct":
                    out.append(
                        _example(
                            rec,
                            item,
                            pending["late"][iid],
                            correction=True,
                            kind="delayed_positive",
                        )
                    )
                    self.stats.corrections += 1
        self.stats.late_positive_impressions += len(late)
        del self.state[f"r/{rid}"]
        marker: dict[str, Any] = {
            "p": pending["p"],
            "end": pending["end"],
            "pos": list(pos),
            "late": late,
        }
        if self.policy.late_policy == "correct":
            marker["rec"] = rec
        self.state[f"c/{rid}"] = marker
        if self.policy.match_by_user_item:
            for item in rec["items"]:
                key = f"u/{rec['user_id']}/{item['item_id']}"
                if (self.state.get(key) or {}).get("rid") == rid:
                    del self.state[key]
        return out

    def _fake_negatives(self, pending: dict[str, Any], elapsed: float) -> list[LabeledExample]:
        """Every item of ``pending`` not converted yet, as a provisional negative (mutates
        ``pending``: the caller stores it)."""
        rec, pos = pending["rec"], pending["pos"]
        items = [i for i in rec["items"] if i["item_id"] not in pos]
        pending["neg"] = [i["item_id"] for i in items]
        self.stats.fake_negatives += len(items)
        return [_example(rec, i, None, kind="fake_negative", elapsed=elapsed) for i in items]

    def pending_impressions(self, partition: int) -> int:
        """Open impressions of a partition, as of its last expiry pass."""
        return self._pending.get(partition, 0)

    def unlabeled_impressions(self, partition: int) -> dict[int, int]:
        """A partition's impressions still without a final label, by maturity bucket."""
        return {b: n for b, n in self._unlabeled.get(partition, {}).items() if n}


def _slate(rec: dict[str, Any], pos: dict[str, list[Any]]) -> Slate:
    return Slate(
        recommendation_id=rec["recommendation_id"],
        user_id=rec["user_id"],
        event_time=rec["event_time"],
        model_version=rec.get("model_version"),
        epsilon=rec.get("epsilon"),
        candidates=rec.get("candidates"),
        scores=rec.get("scores"),
        shown=[
            ShownItem(
                item_id=i["item_id"],
                position=i["position"],
                propensity=i["propensity"],
                score=i.get("score"),
                converted=i["item_id"] in pos,
                value=pos[i["item_id"]][2] if i["item_id"] in pos else 0.0,
            )
            for i in rec["items"]
        ],
    )


def _source(input: Input, forwarded: bool) -> str:
    return input[0].upper() if forwarded else input[0]


def _example(
    rec: dict[str, Any],
    item: dict[str, Any],
    outcome: list[Any] | None,
    *,
    correction: bool = False,
    weighted: bool = False,
    kind: ExampleKind,
    elapsed: float | None = None,
) -> LabeledExample:
    """``outcome`` is ``[event_time, kind, value]`` of the (first) qualifying outcome; with
    ``weighted`` the value (a sum) is the example's weight, or 1 when it is 0. ``elapsed``:
    from the impression to the emission, the outcome's time by default."""
    value = outcome[2] if outcome is not None else 0.0
    if elapsed is None and outcome is not None:
        elapsed = max(0.0, outcome[0] - rec["event_time"])
    return LabeledExample(
        example_id=LabeledExample.id_for(rec["recommendation_id"], item["item_id"]),
        recommendation_id=rec["recommendation_id"],
        user_id=rec["user_id"],
        item_id=item["item_id"],
        position=item["position"],
        propensity=item["propensity"],
        served_score=item["score"],
        model_version=rec["model_version"],
        context=rec["context"],
        item_features=item["features"],
        label=outcome is not None,
        outcome_kind=outcome[1] if outcome is not None else None,
        value=value,
        weight=value if weighted and value > 0 else 1.0,
        correction=correction,
        recommendation_time=rec["event_time"],
        outcome_time=outcome[0] if outcome is not None else None,
        kind=kind,
        elapsed_s=elapsed,
    )


def home_partition(key: str, value: Any) -> int:
    """The input partition a state entry belongs to: every value but the watermark's names it."""
    return int(key[2:]) if key[0] == "w" else int(value["p"])


class JoinState(MutableMapping[str, Any]):
    """The join's state with its changes since the last :meth:`drain`, by home partition.

    A key written many times between two drains (the watermark, on every advancing event) is
    written to the changelog once, with its last value: the changelog only has to hold the
    state as of each committed transaction.

    >>> s = JoinState()
    >>> s["w/1"] = {"r": 5.0}; s["r/a"] = {"p": 0}; s["w/1"] = {"r": 6.0}; del s["r/a"]
    >>> sorted(s.drain())
    [(0, 'r/a', None), (1, 'w/1', {'r': 6.0})]
    >>> s.drain(), s.drop_partitions({1}), len(s)
    ([], None, 0)
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._dirty: dict[str, int] = {}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._dirty[key] = home_partition(key, value)

    def __delitem__(self, key: str) -> None:
        self._dirty[key] = home_partition(key, self._data.pop(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def drain(self) -> list[tuple[int, str, Any]]:
        """``(partition, key, value or None for a deletion)`` of every key changed since the
        last drain, and forget them."""
        changes = [(p, k, self._data.get(k)) for k, p in self._dirty.items()]
        self._dirty.clear()
        return changes

    def restore(self, key: str, value: Any) -> None:
        """Apply a changelog record (``None`` deletes) without counting it as a change."""
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the entries, and unsent changes, of partitions this worker no longer owns."""
        gone = set(partitions)
        for key in [k for k, v in self._data.items() if home_partition(k, v) in gone]:
            del self._data[key]
        for key in [k for k, p in self._dirty.items() if p in gone]:
            del self._dirty[key]
