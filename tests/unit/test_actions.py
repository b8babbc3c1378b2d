"""The automatic rollback, and the alerts that announce it."""

from __future__ import annotations

from pathlib import Path

from streamlearn.actions import auto_rollback
from streamlearn.alerting import Alarms, Alert, Rule
from streamlearn.clock import ManualClock
from streamlearn.registry import Registry
from streamlearn.snapshots import ObjectSnapshotStore
from tests.factories import trained

RULE = Rule(
    name="concept-drift", metric="concept_drift", window="stream", bad="above", threshold=0.5
)


def firing(clock: ManualClock) -> Alert:
    [alert] = Alarms([RULE], clock).observe("ctr", "concept_drift", "stream", 1.0, "ctr:v2")
    return alert


def test_a_firing_alarm_rolls_the_champion_back_and_says_so(tmp_path: Path) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k")
    for v in (1, 2):
        store.put(trained(v, n=5))
    registry = Registry(store)
    registry.promote("ctr", 1)
    registry.promote("ctr", 2)
    clock = ManualClock(100.0)
    alerts = auto_rollback(firing(clock), registry, clock)
    assert registry.served_version("ctr") == 1
    assert [(a.status, a.dedup_key, a.severity) for a in alerts] == [
        ("firing", "ctr/auto-rollback/concept-drift", "info"),
        ("resolved", "ctr/auto-rollback/concept-drift", "info"),
    ]
    assert "rolled back from v2 to v1 after ctr/concept-drift/stream fired" in alerts[0].summary
    assert alerts[1].sequence == alerts[0].sequence + 1


def test_with_nothing_to_roll_back_to_the_alert_says_why(tmp_path: Path) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k")
    store.put(trained(1, n=5))
    clock = ManualClock(100.0)
    alerts = auto_rollback(firing(clock), Registry(store), clock)
    assert alerts[0].severity == "warning" and "could not roll back" in alerts[0].summary
    assert Registry(store).served_version("ctr") == 1
