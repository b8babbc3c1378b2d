"""The join's semantics, driven through a dict and a manual clock: no Kafka, milliseconds."""

from __future__ import annotations

import json
import random
from typing import Any, Literal

import orjson
import pytest

from streamlearn.clock import ManualClock
from streamlearn.events import Outcome, Recommendation
from streamlearn.joining import FORWARDED_IDLE_EXTRA_S, Joiner, JoinPolicy, JoinState

T0 = 1_700_000_000.0
POLICY = JoinPolicy(window_s=10.0, allowed_lateness_s=1.0, idle_timeout_s=5.0, early_grace_s=3.0)


def rec(
    rid: str, t: float, items: tuple[str, ...] = ("a", "b"), user: str = "u1"
) -> Recommendation:
    return Recommendation.model_validate(
        {
            "recommendation_id": rid,
            "user_id": user,
            "event_time": t,
            "context": {"segment": "s"},
            "items": [
                {"item_id": i, "position": n, "score": 0.1, "features": {"price": 1.0}}
                for n, i in enumerate(items)
            ],
            "model_version": "7",
        }
    )


def outcome(rid: str | None, item: str, t: float, kind: str = "click") -> Outcome:
    return Outcome.model_validate(
        {
            "recommendation_id": rid,
            "user_id": "u1",
            "item_id": item,
            "kind": kind,
            "value": 2.0,
            "event_time": t,
        }
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def joiner(clock: ManualClock) -> Joiner:
    return Joiner(POLICY, {}, clock)


def labels(examples: list[Any]) -> list[tuple[str, bool]]:
    return [(e.example_id, e.label) for e in examples]


def outcomes_reach(joiner: Joiner, t: float, partition: int = 0) -> None:
    """Move the outcome input's event time to ``t`` (with an outcome that matches nothing)."""
    joiner.on_outcome(outcome(None, "zz", t), partition)


def caught_up(joiner: Joiner, *sources: Literal["recommendations", "outcomes"]) -> None:
    """The reader has read partition 0 of these inputs (default: both) to their end."""
    for source in sources or ("recommendations", "outcomes"):
        joiner.on_caught_up(0, source)


def test_an_input_with_a_backlog_is_never_idle(joiner: Joiner, clock: ManualClock) -> None:
    """However long since its last record was read (a stall, a slow fetch), an input that still
    has records to read holds the watermark: they may be outcomes for open windows."""
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0 + 1)
    caught_up(joiner, "recommendations")
    clock.advance(100)
    assert joiner.on_tick(0) == []
    assert labels(joiner.on_outcome(outcome("r1", "a", T0 + 2), 0)) == [("r1:a", True)]
    caught_up(joiner, "outcomes")
    clock.advance(4.9)  # read to its end, but not yet silent for the idle timeout
    assert joiner.on_tick(0) == []
    clock.advance(100)
    assert labels(joiner.on_tick(0)) == [("r1:b", False)]


def test_a_record_ends_idleness(joiner: Joiner, clock: ManualClock) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0)
    caught_up(joiner)
    clock.advance(4)
    outcomes_reach(joiner, T0 + 0.5)  # more to read: silence starts again from the next end
    clock.advance(100)
    assert joiner.on_tick(0) == []


def test_outcome_in_window_is_a_positive_at_once(joiner: Joiner) -> None:
    assert joiner.on_recommendation(rec("r1", T0), 0) == []
    out = joiner.on_outcome(outcome("r1", "a", T0 + 4), 0)
    assert labels(out) == [("r1:a", True)]
    example = out[0]
    assert (example.position, example.served_score, example.model_version) == (0, 0.1, "7")
    assert example.context == {"segment": "s"} and example.item_features == {"price": 1.0}
    assert (example.recommendation_time, example.outcome_time) == (T0, T0 + 4)


def test_negatives_only_when_the_watermark_passes_the_window(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    joiner.on_outcome(outcome("r1", "a", T0 + 1), 0)
    outcomes_reach(joiner, T0 + 30)
    # watermark = least input time - lateness = T0 + 10.5 - 1 < T0 + 10
    assert joiner.on_recommendation(rec("r2", T0 + 10.5), 0) == []
    out = joiner.on_recommendation(rec("r3", T0 + 11), 0)
    assert labels(out) == [("r1:b", False)]
    assert joiner.stats.negatives == 1 and joiner.stats.positives == 1


def test_replayed_history_whose_outcomes_stop_hours_early_is_labeled_at_once(
    joiner: Joiner, clock: ManualClock
) -> None:
    """Three hours of history replayed in seconds, its last outcome in the first minute: once
    the outcome input is idle it holds nothing back, and when the replay ends the last windows
    close within the idle timeout and a window's length of wall time, not three hours."""
    out: list[Any] = []
    for n in range(180):  # a recommendation a minute, two items each
        out += joiner.on_recommendation(rec(f"r{n}", T0 + 60 * n), 0)
        if n == 0:
            out += joiner.on_outcome(outcome("r0", "a", T0 + 1), 0)
            caught_up(joiner, "outcomes")  # nothing more to read there
        clock.advance(0.05)
    caught_up(joiner, "recommendations")  # the replay is over
    clock.advance(POLICY.idle_timeout_s + POLICY.window_s + POLICY.allowed_lateness_s + 0.1)
    out += joiner.on_tick(0)
    assert len(out) == 360 and joiner.pending_impressions(0) == 0
    assert [e.example_id for e in out if e.label] == ["r0:a"]


def test_a_lagging_outcome_input_holds_windows_open(joiner: Joiner, clock: ManualClock) -> None:
    """After a restart the recommendations may be read ahead of the outcomes: no window may
    close before the outcomes that could still land in it have been read."""
    joiner.on_recommendation(rec("r1", T0), 0)
    joiner.on_outcome(outcome("r1", "a", T0 + 1), 0)
    assert joiner.on_recommendation(rec("r2", T0 + 100), 0) == []  # outcomes still at T0 + 1
    assert labels(joiner.on_outcome(outcome("r1", "b", T0 + 9), 0)) == [("r1:b", True)]
    outcomes_reach(joiner, T0 + 12)
    assert joiner.on_tick(0) == []  # nothing left open in r1: both items are positive
    assert "c/r1" in joiner.state
    # An outcome input read to its end that stays silent stops holding the watermark after the
    # idle timeout.
    caught_up(joiner)
    clock.advance(5 + 100)
    assert labels(joiner.on_tick(0)) == [("r2:a", False), ("r2:b", False)]


def test_forwarded_outcomes_hold_windows_open_once_they_have_come(
    joiner: Joiner, clock: ManualClock
) -> None:
    """Outcomes another worker forwards through the repartition topic trail the ones read in
    place: once any has come, their input holds the watermark like the others, so a forwarded
    outcome still in transit lands in its window; before any has come, it holds nothing."""
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0 + 5)
    joiner.on_outcome(outcome("r1", "a", T0 + 1), 0, forwarded=True)
    joiner.on_recommendation(rec("r2", T0 + 30), 0)
    assert joiner.on_outcome(outcome(None, "zz", T0 + 30), 0) == []  # in place: far ahead
    assert labels(joiner.on_outcome(outcome("r1", "b", T0 + 9), 0, forwarded=True)) == [
        ("r1:b", True)
    ]
    assert joiner.watermark(0) == T0 + 9 - POLICY.allowed_lateness_s
    # Read to its end: silent for the idle timeout and the time a crashed worker's transaction
    # may hide its forwards, it holds nothing back any more.
    joiner.on_caught_up(0, "outcomes", forwarded=True)
    clock.advance(POLICY.idle_timeout_s + 0.1)
    assert joiner.watermark(0) == T0 + 9 - POLICY.allowed_lateness_s
    clock.advance(FORWARDED_IDLE_EXTRA_S)
    assert joiner.watermark(0) == T0 + 30 - POLICY.allowed_lateness_s


def test_a_partition_nothing_was_forwarded_to_does_not_wait_for_it(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0 + 12)
    assert labels(joiner.on_recommendation(rec("r2", T0 + 12), 0)) == [
        ("r1:a", False),
        ("r1:b", False),
    ]


def test_windows_are_per_partition(joiner: Joiner) -> None:
    outcomes_reach(joiner, T0 + 100, partition=0)
    outcomes_reach(joiner, T0 + 100, partition=1)
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_recommendation(rec("r2", T0 + 60), 1) == []  # partition 1's watermark only
    assert labels(joiner.on_recommendation(rec("r3", T0 + 60), 0)) == [
        ("r1:a", False),
        ("r1:b", False),
    ]


def test_idle_partition_closes_windows_by_wall_clock(joiner: Joiner, clock: ManualClock) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    caught_up(joiner)
    clock.advance(5 + 10)  # idle timeout, then wall time up to the window's end plus lateness
    assert joiner.on_tick(0) == []
    clock.advance(1.0)
    assert labels(joiner.on_tick(0)) == [("r1:a", False), ("r1:b", False)]
    assert joiner.pending_impressions(0) == 0


def test_watermark_never_moves_back(joiner: Joiner, clock: ManualClock) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0)
    caught_up(joiner)
    clock.advance(100)
    advanced = joiner.watermark(0)
    assert advanced is not None and advanced > T0 + 50
    joiner.on_recommendation(rec("r2", T0 + 1), 0)  # an old event after the idle stretch
    assert joiner.watermark(0) == advanced


def test_duplicate_outcomes_never_make_a_second_label(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    first = joiner.on_outcome(outcome("r1", "a", T0 + 1), 0)
    again = joiner.on_outcome(outcome("r1", "a", T0 + 1), 0)  # producer retry
    cart = joiner.on_outcome(outcome("r1", "a", T0 + 2, "add_to_cart"), 0)  # second kind
    outcomes_reach(joiner, T0 + 30)
    closed = joiner.on_recommendation(rec("r9", T0 + 20), 0)
    assert labels(first) == [("r1:a", True)] and again == [] and cart == []
    assert labels(closed) == [("r1:b", False)]
    assert joiner.stats.duplicate_outcomes == 2


def test_replayed_recommendation_is_dropped_open_or_closed(joiner: Joiner) -> None:
    outcomes_reach(joiner, T0 + 100)
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_recommendation(rec("r1", T0), 0) == []
    joiner.on_recommendation(rec("r2", T0 + 30), 0)  # closes r1
    assert joiner.on_recommendation(rec("r1", T0), 0) == []
    assert joiner.stats.duplicate_recommendations == 2
    assert joiner.stats.negatives == 2  # r1's two items, once


def test_outcome_before_its_recommendation_waits_for_it(joiner: Joiner) -> None:
    assert joiner.on_outcome(outcome("r1", "b", T0 + 2), 0) == []
    out = joiner.on_recommendation(rec("r1", T0), 0)
    assert labels(out) == [("r1:b", True)]


def test_early_outcome_without_recommendation_expires_as_unmatched(joiner: Joiner) -> None:
    joiner.on_outcome(outcome("ghost", "a", T0), 0)
    outcomes_reach(joiner, T0 + 30)  # itself unmatched: 1
    joiner.on_recommendation(rec("r1", T0 + 4.5), 0)  # watermark T0 + 3.5 > T0 + grace 3
    assert joiner.stats.unmatched_outcomes == 2
    assert joiner.on_recommendation(rec("ghost", T0 + 5), 0) == []  # the outcome is gone
    assert joiner.stats.positives == 0


def test_outcome_after_the_window_is_late_and_dropped(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_outcome(outcome("r1", "a", T0 + 10.5), 0) == []  # window still open
    outcomes_reach(joiner, T0 + 30)
    joiner.on_recommendation(rec("r2", T0 + 20), 0)  # closes r1
    assert joiner.on_outcome(outcome("r1", "b", T0 + 12), 0) == []  # after the close
    assert joiner.stats.late_outcomes == 2
    assert joiner.stats.negatives == 2


def test_positive_kinds_are_configurable(clock: ManualClock) -> None:
    purchase_only = JoinPolicy(window_s=10.0, positive_kinds=frozenset({"purchase"}))
    j = Joiner(purchase_only, {}, clock)
    j.on_recommendation(rec("r1", T0), 0)
    assert j.on_outcome(outcome("r1", "a", T0 + 1, "click"), 0) == []
    assert labels(j.on_outcome(outcome("r1", "a", T0 + 2, "purchase"), 0)) == [("r1:a", True)]
    assert j.stats.ignored_outcomes == 1


def test_outcome_for_an_item_not_shown_or_without_id_is_unmatched(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_outcome(outcome("r1", "zzz", T0 + 1), 0) == []
    assert joiner.on_outcome(outcome(None, "a", T0 + 1), 0) == []
    assert joiner.stats.unmatched_outcomes == 2


def test_state_is_json_and_a_new_joiner_resumes_from_it(clock: ManualClock) -> None:
    """What a restarted joiner sees: the changelog's JSON, restored into a fresh state."""
    first = Joiner(POLICY, {}, clock)
    first.on_recommendation(rec("r1", T0), 0)
    first.on_outcome(outcome("r1", "a", T0 + 1), 0)
    restored = json.loads(json.dumps(first.state))
    second = Joiner(POLICY, restored, clock)
    assert second.on_outcome(outcome("r1", "a", T0 + 2), 0) == []  # already labeled
    outcomes_reach(second, T0 + 30)
    assert labels(second.on_recommendation(rec("r2", T0 + 20), 0)) == [("r1:b", False)]


def test_closed_markers_are_purged_after_retention(clock: ManualClock) -> None:
    j = Joiner(
        JoinPolicy(window_s=10.0, allowed_lateness_s=0.0, dedup_retention_s=100.0), {}, clock
    )
    outcomes_reach(j, T0 + 1000)
    j.on_recommendation(rec("r1", T0), 0)
    j.on_recommendation(rec("r2", T0 + 50), 0)
    assert "c/r1" in j.state
    j.on_recommendation(rec("r3", T0 + 111), 0)
    assert "c/r1" not in j.state and "c/r2" in j.state


def test_sum_value_emits_one_weighted_positive_when_the_window_closes(clock: ManualClock) -> None:
    j = Joiner(JoinPolicy(window_s=10.0, allowed_lateness_s=0.0, combine="sum_value"), {}, clock)
    j.on_recommendation(rec("r1", T0), 0)
    buy = outcome("r1", "a", T0 + 2, "purchase")
    assert j.on_outcome(outcome("r1", "a", T0 + 1, "click"), 0) == []  # value 2.0
    assert j.on_outcome(buy.model_copy(update={"value": 30.0}), 0) == []
    assert j.on_outcome(outcome("r1", "a", T0 + 11), 0) == []  # after the window: late
    outcomes_reach(j, T0 + 20)
    out = j.on_recommendation(rec("r2", T0 + 20), 0)
    assert labels(out) == [("r1:a", True), ("r1:b", False)]
    positive = out[0]
    assert (positive.value, positive.weight) == (32.0, 32.0)
    assert (positive.outcome_kind, positive.outcome_time) == ("click", T0 + 1)
    assert out[1].weight == 1.0
    assert j.stats.positives == 1 and j.stats.late_outcomes == 1


def test_earliest_keeps_weight_one_whatever_the_value(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    (example,) = joiner.on_outcome(outcome("r1", "a", T0 + 1, "purchase"), 0)
    assert (example.value, example.weight) == (2.0, 1.0)


@pytest.fixture
def correcting(clock: ManualClock) -> Joiner:
    return Joiner(
        JoinPolicy(window_s=10.0, allowed_lateness_s=1.0, late_policy="correct"), {}, clock
    )


def test_correction_after_close_follows_the_negative_once(correcting: Joiner) -> None:
    j = correcting
    j.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(j, T0 + 30)
    assert labels(j.on_recommendation(rec("r2", T0 + 20), 0)) == [("r1:a", False), ("r1:b", False)]
    (fix,) = j.on_outcome(outcome("r1", "b", T0 + 25), 0)
    assert (fix.example_id, fix.label, fix.correction) == ("r1:b", True, True)
    assert fix.item_features == {"price": 1.0} and fix.outcome_time == T0 + 25
    assert j.on_outcome(outcome("r1", "b", T0 + 26), 0) == []  # never twice
    assert j.stats.corrections == 1 and j.stats.late_positive_impressions == 1
    assert j.stats.coverage == 0.0


def test_late_by_event_time_while_open_is_corrected_at_close(correcting: Joiner) -> None:
    j = correcting
    j.on_recommendation(rec("r1", T0), 0)
    j.on_outcome(outcome("r1", "a", T0 + 1), 0)
    assert j.on_outcome(outcome("r1", "b", T0 + 10.5), 0) == []  # after the end, before close
    outcomes_reach(j, T0 + 30)
    out = j.on_recommendation(rec("r2", T0 + 20), 0)
    assert [(e.example_id, e.label, e.correction) for e in out] == [
        ("r1:b", False, False),
        ("r1:b", True, True),
    ]
    assert j.stats.coverage == pytest.approx(0.5)  # one positive in time, one only late


def test_drop_policy_counts_late_but_emits_nothing(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    joiner.on_outcome(outcome("r1", "a", T0 + 2), 0)
    outcomes_reach(joiner, T0 + 30)
    joiner.on_recommendation(rec("r2", T0 + 20), 0)
    assert joiner.on_outcome(outcome("r1", "b", T0 + 25), 0) == []
    assert joiner.stats.late_positive_impressions == 1 and joiner.stats.corrections == 0
    assert joiner.stats.coverage == pytest.approx(0.5)


def test_match_by_user_and_item_takes_the_most_recent_open_impression(clock: ManualClock) -> None:
    j = Joiner(
        JoinPolicy(window_s=10.0, allowed_lateness_s=0.0, match_by_user_item=True), {}, clock
    )
    j.on_recommendation(rec("old", T0), 0)
    j.on_recommendation(rec("new", T0 + 1), 0)
    assert labels(j.on_outcome(outcome(None, "a", T0 + 2), 0)) == [("new:a", True)]
    other_user = outcome(None, "a", T0 + 2).model_copy(update={"user_id": "u2"})
    assert j.on_outcome(other_user, 0) == []
    assert j.stats.unmatched_outcomes == 1


def test_matching_by_user_and_item_is_off_by_default(joiner: Joiner) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_outcome(outcome(None, "a", T0 + 1), 0) == []
    assert joiner.stats.unmatched_outcomes == 1


def test_an_input_never_seen_holds_windows_until_idle(joiner: Joiner, clock: ManualClock) -> None:
    joiner.on_recommendation(rec("r1", T0), 0)
    assert joiner.on_recommendation(rec("r2", T0 + 50), 0) == []  # no outcome read yet
    caught_up(joiner, "outcomes")
    clock.advance(5.5)  # the outcome input has been silent for longer than the idle timeout
    assert labels(joiner.on_tick(0)) == [("r1:a", False), ("r1:b", False)]


def test_pending_impressions_and_watermark_lag(joiner: Joiner, clock: ManualClock) -> None:
    outcomes_reach(joiner, T0 + 5)
    joiner.on_recommendation(rec("r1", T0), 0)
    joiner.on_tick(0)
    joiner.on_recommendation(rec("r2", T0 + 3, items=("a", "b", "c")), 0)
    assert joiner.pending_impressions(0) == 5
    assert joiner.watermark_lag(0) == pytest.approx(clock.now() - (T0 + 2))
    joiner.forget_partitions()  # as after a rebalance: the next scan recounts
    joiner.on_tick(0)
    assert joiner.pending_impressions(0) == 5


def test_downtime_is_not_idleness(clock: ManualClock) -> None:
    """A joiner restarted after a long outage must read its backlog before idleness counts."""
    first = Joiner(POLICY, {}, clock)
    first.on_recommendation(rec("r1", T0), 0)
    first.on_outcome(outcome("r1", "a", T0 + 1), 0)
    clock.advance(600)  # down for ten minutes
    second = Joiner(POLICY, json.loads(json.dumps(first.state)), clock)
    assert second.on_tick(0) == []  # the backlog may hold r1's outcomes
    assert labels(second.on_outcome(outcome("r1", "b", T0 + 2), 0)) == [("r1:b", True)]
    caught_up(second)
    clock.advance(5 + 12)  # silent past the idle timeout (in this process's time) and the end
    assert second.on_tick(0) == []  # both items are positive: nothing to emit, window closed
    assert "c/r1" in second.state


def test_a_crash_between_commits_replays_to_the_same_examples(clock: ManualClock) -> None:
    """The joiner's transactions, in miniature: examples and drained state changes commit
    together; a crash loses what came after the last commit, and a new joiner restored from the
    changelog (JSON through orjson, as in production) and fed the uncommitted records again
    emits exactly what an uninterrupted run does."""
    rng = random.Random(4)
    events: list[tuple[float, Any, int]] = []
    for n in range(60):
        t, user = T0 + n * 0.5, f"u{n % 4}"
        p = n % 4 % 2  # users 0 and 2 on partition 0, 1 and 3 on partition 1
        events.append((t, rec(f"r{n}", t, user=user), p))
        if rng.random() < 0.5:
            events.append((t + rng.uniform(-1, 12), outcome(f"r{n}", "a", t + 1), p))
    events.sort(key=lambda e: e[0])

    def feed(j: Joiner, batch: list[tuple[float, Any, int]]) -> list[str]:
        out = []
        for t, event, p in batch:
            clock.advance(max(0.0, t - clock.now()))
            if isinstance(event, Recommendation):
                out += j.on_recommendation(event, p)
            else:
                out += j.on_outcome(event, p)
        return [e.example_id + ("+" if e.label else "-") for e in out]

    whole = feed(Joiner(POLICY, JoinState(), clock), events)

    state = JoinState()
    first = Joiner(POLICY, state, clock)
    committed = feed(first, events[:40])
    changelog = [(p, k, orjson.dumps(v) if v is not None else None) for p, k, v in state.drain()]
    feed(first, events[40:55])  # its examples and state changes die with the process

    restored = JoinState()
    for _, key, raw in changelog:
        restored.restore(key, None if raw is None else orjson.loads(raw))
    assert restored.drain() == []  # restoring is not a change
    resumed = committed + feed(Joiner(POLICY, restored, clock), events[40:])
    assert sorted(resumed) == sorted(whole)
    assert len(set(whole)) == len(whole) and any(e.endswith("+") for e in whole)


def test_join_state_forgets_released_partitions_and_their_unsent_changes() -> None:
    s = JoinState()
    s["r/x"] = {"p": 0}
    s["w/1"] = {"r": 1.0}
    s.drop_partitions({1})
    assert dict(s) == {"r/x": {"p": 0}}
    assert s.drain() == [(0, "r/x", {"p": 0})]


def test_a_stall_of_the_reader_is_not_idleness(joiner: Joiner, clock: ManualClock) -> None:
    """Read to the end, then the reader itself stops for 30 s (a pause of the process, a commit
    the broker was slow to answer): on resuming, what it had read to its end may have grown, so
    its inputs are not idle yet; the window stays open for the outcome still unread. Silence
    from then on is idleness again."""
    joiner.on_recommendation(rec("r1", T0), 0)
    outcomes_reach(joiner, T0)
    caught_up(joiner)
    clock.advance(30)
    joiner.on_stalled()
    assert joiner.on_tick(0) == []
    assert labels(joiner.on_outcome(outcome("r1", "a", T0 + 2), 0)) == [("r1:a", True)]
    caught_up(joiner, "outcomes")
    clock.advance(100)
    assert labels(joiner.on_tick(0)) == [("r1:b", False)]
