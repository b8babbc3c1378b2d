"""The attribution-window join: recommendations x outcomes -> one labeled example per impression.

Pure logic, no Kafka: the joiner process feeds it records and ticks and sends what it returns.
All state lives in a ``MutableMapping[str, Any]`` of JSON-able values, which in production is a
faust Table backed by a changelog topic (so a restarted joiner resumes with every open window)
and in unit tests a plain dict. Values are reassigned, never mutated in place, because only an
assignment reaches the changelog.

Semantics
---------
* An impression is a recommendation x one item of its slate. Its window is
  ``[recommendation.event_time, recommendation.event_time + window]`` in event time.
* A positive is emitted when the first qualifying outcome (a kind in ``positive_kinds``, event
  time inside the window) arrives for an open impression; a later outcome for the same impression
  is a duplicate and makes no second label.
* A negative is emitted for every still-unlabeled impression once the partition's watermark has
  passed the window's end.
* The watermark of a partition is the newest recommendation event time seen there, less
  ``allowed_lateness``; when no recommendation has arrived for ``idle_timeout`` of wall time it
  advances with the wall clock from there, so a quiet stream still closes its windows. It never
  moves back.
* An outcome naming a recommendation not seen yet waits until the watermark passes its event time
  plus ``early_grace``; then it is counted as unmatched and dropped.
* An outcome for a window already closed is counted as late and dropped (policy: drop).
* A replayed recommendation (same id, window open or recently closed) is a duplicate: dropped.
* Outcomes without a ``recommendation_id`` are counted as unmatched (matching by user and item
  is not enabled).

State keys: ``r/<id>`` open recommendation, ``c/<id>`` closed marker kept for ``dedup_retention``
after the window ends, ``e/<id>`` early outcomes, ``w/<partition>`` watermark.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

from streamlearn.clock import Clock
from streamlearn.events import LabeledExample, Outcome, Recommendation


@dataclass(frozen=True)
class JoinPolicy:
    window_s: float
    allowed_lateness_s: float = 2.0
    idle_timeout_s: float = 10.0
    early_grace_s: float = 30.0
    positive_kinds: frozenset[str] = frozenset({"click", "add_to_cart", "purchase"})
    dedup_retention_s: float = 3600.0


@dataclass
class JoinStats:
    recommendations: int = 0
    impressions: int = 0
    outcomes: int = 0
    positives: int = 0
    negatives: int = 0
    late_outcomes: int = 0
    unmatched_outcomes: int = 0
    duplicate_outcomes: int = 0
    duplicate_recommendations: int = 0
    ignored_outcomes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Joiner:
    policy: JoinPolicy
    state: MutableMapping[str, Any]
    clock: Clock
    stats: JoinStats = field(default_factory=JoinStats)
    # In-memory hint of the earliest thing that can expire per partition, so that most calls skip
    # the scan of the state. Absent (after a restart) means "scan once".
    _next_expiry: dict[int, float] = field(default_factory=dict)

    # ---- inputs -------------------------------------------------------------------------------

    def on_recommendation(self, rec: Recommendation, partition: int) -> list[LabeledExample]:
        self.stats.recommendations += 1
        rid = rec.recommendation_id
        if f"r/{rid}" in self.state or f"c/{rid}" in self.state:
            self.stats.duplicate_recommendations += 1
            return []
        self.stats.impressions += len(rec.items)
        self._observe(partition, rec.event_time)
        pending: dict[str, Any] = {
            "p": partition,
            "end": rec.event_time + self.policy.window_s,
            "rec": rec.model_dump(mode="json"),
            "done": [],
        }
        out: list[LabeledExample] = []
        early = self.state.pop(f"e/{rid}", None)
        if early is not None:
            for raw in early["outcomes"]:
                example = self._apply(pending, Outcome.model_validate(raw))
                if example is not None:
                    out.append(example)
        self.state[f"r/{rid}"] = pending
        self._hint(partition, pending["end"])
        out.extend(self._expire(partition))
        return out

    def on_outcome(self, outcome: Outcome, partition: int) -> list[LabeledExample]:
        self.stats.outcomes += 1
        rid = outcome.recommendation_id
        if rid is None:
            self.stats.unmatched_outcomes += 1
            return []
        key = f"r/{rid}"
        pending = self.state.get(key)
        if pending is not None:
            example = self._apply(pending, outcome)
            if example is None:
                return []
            self.state[key] = pending
            return [example]
        if f"c/{rid}" in self.state:
            self.stats.late_outcomes += 1
            return []
        early = self.state.get(f"e/{rid}") or {"p": partition, "until": 0.0, "outcomes": []}
        until = max(early["until"], outcome.event_time + self.policy.early_grace_s)
        self.state[f"e/{rid}"] = {
            "p": partition,
            "until": until,
            "outcomes": [*early["outcomes"], outcome.model_dump(mode="json")],
        }
        self._hint(partition, until)
        return []

    def on_tick(self, partition: int) -> list[LabeledExample]:
        """Advance the partition's watermark by wall time if it is idle, and close windows."""
        return self._expire(partition)

    # ---- watermark ----------------------------------------------------------------------------

    def watermark(self, partition: int) -> float | None:
        w = self.state.get(f"w/{partition}")
        if w is None:
            return None
        idle = self.clock.now() - w["wall"] - self.policy.idle_timeout_s
        return float(max(w["wm"], w["max"] - self.policy.allowed_lateness_s + max(0.0, idle)))

    def _observe(self, partition: int, event_time: float) -> None:
        key = f"w/{partition}"
        w = self.state.get(key)
        if w is None:
            w = {"max": event_time, "wm": event_time - self.policy.allowed_lateness_s}
        elif event_time > w["max"]:
            # Freeze whatever the idle fallback reached, so the watermark never moves back.
            w = {"max": event_time, "wm": self.watermark(partition)}
        else:
            return
        w["wall"] = self.clock.now()
        self.state[key] = w

    # ---- internals ----------------------------------------------------------------------------

    def _hint(self, partition: int, at: float) -> None:
        current = self._next_expiry.get(partition)
        if current is not None:
            self._next_expiry[partition] = min(current, at)

    def _apply(self, pending: dict[str, Any], outcome: Outcome) -> LabeledExample | None:
        """Label an impression from an outcome; mutates ``pending``, the caller stores it."""
        if outcome.kind not in self.policy.positive_kinds:
            self.stats.ignored_outcomes += 1
            return None
        if outcome.event_time > pending["end"]:
            self.stats.late_outcomes += 1
            return None
        rec = pending["rec"]
        item = next((i for i in rec["items"] if i["item_id"] == outcome.item_id), None)
        if item is None:
            self.stats.unmatched_outcomes += 1
            return None
        if outcome.item_id in pending["done"]:
            self.stats.duplicate_outcomes += 1
            return None
        pending["done"] = [*pending["done"], outcome.item_id]
        self.stats.positives += 1
        return _example(rec, item, outcome)

    def _expire(self, partition: int) -> list[LabeledExample]:
        wm = self.watermark(partition)
        if wm is None:
            return []
        hint = self._next_expiry.get(partition)
        if hint is not None and wm < hint:
            return []
        out: list[LabeledExample] = []
        next_expiry = float("inf")
        for key, value in list(self.state.items()):
            if key[0] == "w" or value["p"] != partition:
                continue
            kind, rid = key.split("/", 1)
            if kind == "r":
                if value["end"] > wm:
                    next_expiry = min(next_expiry, value["end"])
                    continue
                out.extend(self._close(value))
                del self.state[key]
                self.state[f"c/{rid}"] = {"p": partition, "end": value["end"]}
                next_expiry = min(next_expiry, value["end"] + self.policy.dedup_retention_s)
            elif kind == "c":
                if value["end"] + self.policy.dedup_retention_s <= wm:
                    del self.state[key]
                else:
                    next_expiry = min(next_expiry, value["end"] + self.policy.dedup_retention_s)
            elif kind == "e":
                if value["until"] <= wm:
                    self.stats.unmatched_outcomes += len(value["outcomes"])
                    del self.state[key]
                else:
                    next_expiry = min(next_expiry, value["until"])
        self._next_expiry[partition] = next_expiry
        return out

    def _close(self, pending: dict[str, Any]) -> list[LabeledExample]:
        rec = pending["rec"]
        done = set(pending["done"])
        negatives = [
            _example(rec, item, None) for item in rec["items"] if item["item_id"] not in done
        ]
        self.stats.negatives += len(negatives)
        return negatives

    def pending_windows(self) -> int:
        return sum(1 for k in self.state if k.startswith("r/"))


def _example(rec: dict[str, Any], item: dict[str, Any], outcome: Outcome | None) -> LabeledExample:
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
        outcome_kind=outcome.kind if outcome is not None else None,
        value=outcome.value if outcome is not None else 0.0,
        recommendation_time=rec["event_time"],
        outcome_time=outcome.event_time if outcome is not None else None,
    )
