"""The joiner's label modes, each kind of example once, with a manual clock and a dict."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample, Outcome, Recommendation
from streamlearn.joining import Joiner, JoinPolicy, JoinState
from tests.unit.test_joining import T0, outcome, rec

BASE = {"window_s": 10.0, "allowed_lateness_s": 0.0, "idle_timeout_s": 60.0}
Seen = tuple[str, bool, str | None, float | None, float]


def joiner(mode: str, state: Any = None, **extra: object) -> Joiner:
    policy = JoinPolicy.model_validate({**BASE, "label_mode": mode, **extra})
    return Joiner(policy, {} if state is None else state, ManualClock(T0))


def seen(examples: list[LabeledExample], rid: str | None = None) -> list[Seen]:
    """(item, label, kind, elapsed, weight) of the examples (of recommendation ``rid``)."""
    return [
        (e.item_id, e.label, e.kind, e.elapsed_s, e.weight)
        for e in examples
        if rid is None or e.recommendation_id == rid
    ]


def advance(j: Joiner, t: float) -> list[LabeledExample]:
    """Both inputs reach event time ``t`` (records that label nothing): what closes."""
    out = j.on_outcome(outcome(None, "zz", t), 0)
    return out + j.on_recommendation(rec(f"tick{t}", t, items=("z",)), 0)


def test_window_mode_is_todays_join_with_kinds() -> None:
    j = joiner("window")
    assert j.on_recommendation(rec("r1", T0), 0) == []
    assert seen(j.on_outcome(outcome("r1", "a", T0 + 2), 0)) == [("a", True, "immediate", 2, 1)]
    assert seen(advance(j, T0 + 11), "r1") == [("b", False, "real_negative", 10, 1)]


def test_fnw_emits_every_impression_at_once_then_a_positive_duplicate_and_a_final_marker() -> None:
    j = joiner("fnw")
    first = j.on_recommendation(rec("r1", T0), 0)
    fake = [("a", False, "fake_negative", 0, 1), ("b", False, "fake_negative", 0, 1)]
    assert seen(first) == fake
    converted = j.on_outcome(outcome("r1", "a", T0 + 4), 0)
    assert seen(converted) == [("a", True, "delayed_positive", 4, 1)]
    # The same impression as served: features, position, served score.
    same = ("context", "item_features", "position", "served_score", "example_id")
    assert all(getattr(converted[0], f) == getattr(first[0], f) for f in same)
    assert j.on_outcome(outcome("r1", "a", T0 + 5), 0) == []  # once
    # The window closes: b's final label, not to be learned again (weight 0).
    assert seen(advance(j, T0 + 11), "r1") == [("b", False, "real_negative", 10, 0)]
    assert (j.stats.delayed_positives, j.stats.positives, j.stats.negatives) == (1, 1, 1)


def test_observe_mode_waits_for_its_window_then_fakes_then_corrects() -> None:
    j = joiner("observe", observe_s=3.0)
    assert j.on_recommendation(rec("r1", T0, items=("a", "b", "c")), 0) == []
    # a converts within the observation window: one immediate positive, nothing else ever.
    assert seen(j.on_outcome(outcome("r1", "a", T0 + 1), 0)) == [("a", True, "immediate", 1, 1)]
    # Event time passes T0 + 3: b and c become fake negatives.
    fake = [("b", False, "fake_negative", 3, 1), ("c", False, "fake_negative", 3, 1)]
    assert seen(advance(j, T0 + 3.5), "r1") == fake
    # b converts later, inside the attribution window: a delayed positive.
    later = [("b", True, "delayed_positive", 6, 1)]
    assert seen(j.on_outcome(outcome("r1", "b", T0 + 6), 0)) == later
    assert seen(advance(j, T0 + 10.5), "r1") == [("c", False, "real_negative", 10, 0)]


def test_observation_windows_survive_a_restart_from_the_changelog() -> None:
    """A restarted joiner rebuilds its timers from the state: the observation windows still
    open end on time, once."""
    state = JoinState()
    joiner("observe", state=state, observe_s=3.0).on_recommendation(rec("r1", T0), 0)
    restored = JoinState()
    for _, key, value in state.drain():
        restored.restore(key, value)
    again = joiner("observe", state=restored, observe_s=3.0)
    faked = seen(advance(again, T0 + 3.5), "r1")
    assert [(i, k) for i, _, k, _, _ in faked] == [("a", "fake_negative"), ("b", "fake_negative")]
    assert seen(advance(again, T0 + 4), "r1") == []  # once


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"label_mode": "fnw", "combine": "sum_value"}, "needs combine earliest"),
        ({"label_mode": "observe", "observe_s": 10.0}, "must be shorter"),
    ],
)
def test_modes_that_cannot_work_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JoinPolicy.model_validate({**BASE, **extra})


FINAL = {"immediate", "delayed_positive", "real_negative"}


def traffic(rng: random.Random, n: int) -> list[Recommendation | Outcome]:
    """Four recommendations a second of one to three items, a tenth replayed; two in five
    impressions convert after an exponential delay (mean 4 s, a 10 s window), some read just
    before their recommendation, some after the window."""
    events: list[tuple[float, int, Recommendation | Outcome]] = []
    for k in range(n):
        t = T0 + k * 0.25
        items = tuple(f"i{m}" for m in range(rng.randint(1, 3)))
        r = rec(f"r{k}", t, items=items)
        events.append((t, 0, r))
        if rng.random() < 0.1:
            events.append((t + rng.random() * 5, 0, r))
        for item in items:
            if rng.random() < 0.4:
                at = t + rng.expovariate(1 / 4)
                events.append((at - rng.random() * 0.5, 1, outcome(f"r{k}", item, at)))
    return [record for _, _, record in sorted(events, key=lambda e: (e[0], e[1]))]


@pytest.mark.parametrize(
    "extra",
    [
        {"label_mode": "window"},
        {"label_mode": "window", "combine": "sum_value"},
        {"label_mode": "fnw"},
        {"label_mode": "observe", "observe_s": 3.0},
    ],
    ids=["window", "window-sum_value", "fnw", "observe"],
)
def test_impressions_without_a_final_label_are_counted_by_bucket(
    extra: dict[str, object],
) -> None:
    """What the label-maturity view needs from the join: per bucket of recommendation time, the
    impressions whose final label has not been emitted. Checked against a count kept from the
    examples themselves after every record (replays, early and late outcomes included), and
    again after the joiner forgets its partitions and rebuilds from the state."""
    mode = extra.pop("label_mode")
    j = joiner(str(mode), maturity_buckets=5, **extra)
    opened: dict[int, int] = {}
    final: dict[int, int] = {}
    known: set[str] = set()
    for record in traffic(random.Random(7), 300):
        if isinstance(record, Recommendation):
            if record.recommendation_id not in known:
                known.add(record.recommendation_id)
                b = j.policy.bucket(record.event_time)
                opened[b] = opened.get(b, 0) + len(record.items)
            out = j.on_recommendation(record, 0)
        else:
            out = j.on_outcome(record, 0)
        for e in out:
            if e.kind in FINAL and not e.correction and e.item_id != "z":
                b = j.policy.bucket(e.recommendation_time)
                final[b] = final.get(b, 0) + 1
        expected = {b: n - final.get(b, 0) for b, n in opened.items() if n != final.get(b, 0)}
        assert j.unlabeled_impressions(0) == expected
    assert any(n for n in expected.values())  # some still open at the end
    assert len(final) >= 5  # and several buckets through the run
    j.forget_partitions()
    j.on_tick(0)
    assert j.unlabeled_impressions(0) == expected


@pytest.mark.parametrize("mode", ["window", "fnw", "observe"])
def test_each_recommendation_closes_into_one_slate_with_its_final_labels(mode: str) -> None:
    """Whatever the label mode, a recommendation's window closing gives one slate: every slot
    shown, converted exactly when the join emitted that impression's positive."""
    j = joiner(mode, observe_s=3.0)
    converted: set[str] = set()
    slates = []
    known: set[str] = set()
    records = traffic(random.Random(11), 200)
    for record in records:
        if isinstance(record, Recommendation):
            known.add(record.recommendation_id)
            out = j.on_recommendation(record, 0)
        else:
            out = j.on_outcome(record, 0)
        converted |= {e.example_id for e in out if e.label and not e.correction}
        slates += j.take_slates()
    advance(j, T0 + 1000)
    slates += j.take_slates()
    slates = [s for s in slates if not s.recommendation_id.startswith("tick")]
    assert sorted(s.recommendation_id for s in slates) == sorted(known)
    assert j.take_slates() == []  # taken once
    for s in slates:
        for slot in s.shown:
            example_id = LabeledExample.id_for(s.recommendation_id, slot.item_id)
            assert slot.converted == (example_id in converted), (s, slot)
            assert slot.value == (2.0 if slot.converted else 0.0)  # the factory's outcome value
    assert any(slot.converted for s in slates for slot in s.shown)
