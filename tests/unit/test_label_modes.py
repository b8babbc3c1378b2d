"""The joiner's label modes, each kind of example once, with a manual clock and a dict."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample
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
