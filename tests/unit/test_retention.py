"""Retention's plan: bounded by its policy whatever the history's length, and never deleting a
version the registry names or the newest."""

from __future__ import annotations

from streamlearn.retention import DAY, HOUR, RetentionPolicy, plan_retention
from streamlearn.snapshots.base import RegistryDocument

NOW = 1_800_000_000.0


def every_10s(days: float) -> list[tuple[int, float]]:
    n = int(days * DAY / 10)
    return [(v, NOW - (n - v) * 10.0) for v in range(1, n + 1)]


def test_a_quarter_of_checkpoints_every_10s_keeps_a_few_hundred() -> None:
    versions = every_10s(120)  # more than a million versions
    doc = RegistryDocument().promoted("champion", 5).promoted("champion", 700_000).pinned(17)
    plan = plan_retention(versions, doc, RetentionPolicy(), NOW)
    newest = versions[-1][0]
    spared = {5, 700_000, 17}
    assert spared <= set(plan.kept) and newest in plan.kept
    assert set(range(newest - 19, newest + 1)) <= set(plan.kept)
    # 20 newest, one per hour for a week (168, one overlapping the newest), one per day for
    # 90 days (the last week's days already among the hours), and the three named.
    assert len(plan.kept) <= 20 + 169 + 91 + 3, len(plan.kept)
    assert len(plan.kept) + len(plan.delete) == len(versions)
    hours = {int(t // HOUR) for v, t in versions if v in plan.kept and NOW - t <= 7 * DAY}
    assert len(hours) >= 7 * 24  # an hour's gap nowhere in the week
    days = {int(t // DAY) for v, t in versions if v in plan.kept}
    assert len(days) >= 90
    assert plan.hot == [700_000, *range(newest - 2, newest + 1)]


def test_the_plan_is_stable_applied_again() -> None:
    versions = every_10s(3)
    policy = RetentionPolicy(keep_last=5)
    first = plan_retention(versions, RegistryDocument(), policy, NOW)
    kept = [(v, t) for v, t in versions if v in first.kept]
    again = plan_retention(kept, RegistryDocument(), policy, NOW)
    assert again.delete == [] and again.kept == first.kept


def test_rollback_targets_stay_and_a_rolled_back_version_may_go() -> None:
    versions = [(v, NOW - 1e7 + v) for v in range(1, 11)]  # older than every window
    doc = RegistryDocument().promoted("champion", 2).promoted("champion", 4).rolled_back("champion")
    doc = doc.promoted("champion", 6)  # history: 2 (rolled back to), then 2 again
    plan = plan_retention(versions, doc, RetentionPolicy(keep_last=1, hot_last=1), NOW)
    assert plan.kept == [2, 6, 10] and plan.hot == [6, 10]
    assert 4 in plan.delete
