"""The automatic rollback, and the alerts that announce it."""

from __future__ import annotations

from pathlib import Path

from streamlearn.actions import GateStep, Rollback, auto_rollback, carry_out
from streamlearn.alerting import Alarms, Alert, Rule
from streamlearn.clock import ManualClock
from streamlearn.evidence import Decision
from streamlearn.learning import ModelSpec
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
    assert "rolled back from ctr:v2 to ctr:v1 after ctr/concept-drift/stream fired" in (
        alerts[0].summary
    )
    assert alerts[1].sequence == alerts[0].sequence + 1


def test_with_nothing_to_roll_back_to_the_alert_says_why(tmp_path: Path) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k")
    store.put(trained(1, n=5))
    clock = ManualClock(100.0)
    alerts = auto_rollback(firing(clock), Registry(store), clock)
    assert alerts[0].severity == "warning" and "could not roll back" in alerts[0].summary
    assert Registry(store).served_version("ctr") == 1


def test_the_gates_decisions_serve_the_challenger_then_step_back_each_once(
    tmp_path: Path,
) -> None:
    """A promotion serves the challenger's newest version under the champion's name and says so
    with the evidence; the rollback returns to the champion. Each, carried out again (after a
    crash), changes nothing more."""
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k")
    store.put(trained(4, n=5))
    store.put(trained(2, n=5, spec=ModelSpec(name="aware")))
    registry = Registry(store)
    clock = ManualClock(100.0)
    figures = {"ctr": (0.1, 0.09, 0.11), "aware": (0.15, 0.13, 0.17)}
    promote = GateStep(Decision("promote", "aware", "ctr", figures, 0.11, "dr"), "ctr", 1)
    alerts = carry_out(promote, registry, clock)
    assert registry.serving("ctr") == ("aware", 2)
    assert [(a.status, a.rule, a.dedup_key, a.severity) for a in alerts] == [
        ("firing", "auto-promotion", "ctr/auto-promotion/promotion-gate", "info"),
        ("resolved", "auto-promotion", "ctr/auto-promotion/promotion-gate", "info"),
    ]
    fired = alerts[0]
    assert (fired.value, fired.threshold, fired.model_version) == (0.15, 0.11, "aware:v2")
    assert "ctr: serving aware:v2. aware promoted over ctr" in fired.summary
    assert "Evidence (dr, anytime bounds): ctr 0.1000 [0.0900, 0.1100]; aware 0.1500" in (
        fired.summary
    )
    carry_out(promote, registry, clock)
    assert registry.serving("ctr") == ("aware", 2)
    assert store.read_registry("ctr").serves_history == [""]  # promoted once
    fell = {"ctr": (0.1, 0.09, 0.11), "aware": (0.05, 0.03, 0.07)}
    rollback = GateStep(Decision("rollback", "aware", "aware", fell, 0.11, "dr"), "ctr", 2)
    [rolled, _] = carry_out(rollback, registry, clock)
    assert registry.serving("ctr") == ("ctr", 4)
    assert rolled.rule == "auto-rollback" and rolled.sequence == 3
    assert "aware fell below the bound it was promoted on (0.1100)" in rolled.summary
    carry_out(rollback, registry, clock)  # aware is no longer served: nothing to undo
    assert registry.serving("ctr") == ("ctr", 4)


def test_an_alarm_about_a_challenger_served_across_names_steps_back_from_it(
    tmp_path: Path,
) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", b"k")
    store.put(trained(1, n=5))
    store.put(trained(1, n=5, spec=ModelSpec(name="aware")))
    registry = Registry(store)
    registry.serve("ctr", "aware")
    clock = ManualClock(100.0)
    [alert] = Alarms([RULE], clock).observe("aware", "concept_drift", "stream", 1.0, "aware:v1")
    [fired, _] = carry_out(Rollback(alert, "ctr", registry.serving("ctr")), registry, clock)
    assert registry.serving("ctr") == ("ctr", 1)
    assert fired.dedup_key == "ctr/auto-rollback/concept-drift"
    assert "rolled back from aware:v1 to ctr:v1 after aware/concept-drift/stream fired" in (
        fired.summary
    )
