"""Automatic actions: roll back what is served when an alarm fires (off by default), and carry
out the promotion gate's decisions (:class:`~streamlearn.evidence.Gate`, off by default).

An action is itself an alert, so on-call hears of it like anything else: an ``info`` alert of
rule ``auto-rollback`` or ``auto-promotion`` (``warning`` when it could not be done), fired and
resolved at once since it is over when it is announced, with its own dedup key.

An action may be run again after a crash (the monitor saves what it is about to do before it
does it): given what was served when it was decided, a rollback that has already moved away from
it changes nothing the second time, and a promotion already made is made again as no change.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlearn.alerting import Alert, Severity
from streamlearn.clock import Clock
from streamlearn.errors import SnapshotError
from streamlearn.evidence import Decision
from streamlearn.registry import CHAMPION, Registry, ServedRef, tag


def auto_rollback(
    alert: Alert,
    registry: Registry,
    clock: Clock,
    name: str | None = None,
    before: ServedRef | None = None,
) -> list[Alert]:
    """Step back what is served under ``name`` (default: ``alert.model``; the API's model name
    when the alarm is about a challenger served under it): a promotion across names undone, else
    the champion back to the version it named before (:meth:`Registry.step_back`). The alerts
    that say so, or why not. ``before`` is what was served when the action was decided (read
    now when not given)."""
    name = name or alert.model
    try:
        if before is None:
            before = registry.serving(name)
        after = registry.step_back(name, expected=before)
        summary = (
            f"{name}: rolled back from {tag(before)} to {tag(after)} after {alert.dedup_key} fired"
        )
        severity: Severity = "info"
        value = float(after[1] or 0)
    except SnapshotError as exc:
        summary = f"{name}: could not roll back after {alert.dedup_key} fired: {exc}"
        severity = "warning"
        value = float(before[1] or 0) if before else 0.0
    return _announced(
        clock,
        dedup_key=f"{name}/auto-rollback/{alert.rule}",
        # Continues from the alarm's own sequence, so it only grows for this key.
        sequence=2 * alert.sequence - 1,
        rule="auto-rollback",
        model=name,
        window=alert.window,
        metric=f"{CHAMPION}_version",
        severity=severity,
        value=value,
        threshold=float(before[1] or 0) if before else 0.0,
        model_version=alert.model_version,
        summary=summary,
    )


def gate_action(
    decision: Decision, registry: Registry, clock: Clock, name: str, sequence: int
) -> list[Alert]:
    """Carry out the promotion gate's ``decision`` on what is served under ``name``: serve the
    promoted challenger (its newest version, as it goes on learning), or step back from a
    promoted champion that fell below the bound it beat. The alerts that announce it with the
    evidence; ``sequence`` counts the gate's decisions (it makes the alerts' sequences grow)."""
    rule = "auto-promotion" if decision.action == "promote" else "auto-rollback"
    try:
        if decision.action == "promote":
            after = registry.serve(name, decision.model)
        else:
            after = registry.step_back(name, expected=(decision.model, None))
        summary = f"{name}: serving {tag(after)}. {decision.summary()}"
        severity: Severity = "info"
    except SnapshotError as exc:
        summary = f"{name}: could not {decision.action}: {exc}. {decision.summary()}"
        severity = "warning"
        after = (decision.model, None)
    return _announced(
        clock,
        dedup_key=f"{name}/{rule}/promotion-gate",
        sequence=2 * sequence - 1,
        rule=rule,
        model=name,
        window="stream",
        metric=decision.estimator,
        severity=severity,
        value=decision.figures[decision.model][0],
        threshold=decision.bound,
        model_version=tag(after) if after[1] is not None else None,
        summary=summary,
    )


@dataclass(frozen=True)
class Rollback:
    """An alarm's rollback of what is served under ``name``, as decided (``before``: served)."""

    alert: Alert
    name: str
    before: ServedRef | None


@dataclass(frozen=True)
class GateStep:
    """The promotion gate's ``sequence``-th decision about what is served under ``name``."""

    decision: Decision
    name: str
    sequence: int


Action = Rollback | GateStep


def carry_out(action: Action, registry: Registry, clock: Clock) -> list[Alert]:
    """Do a decided action (again, after a crash: see above); the alerts that announce it."""
    if isinstance(action, Rollback):
        return auto_rollback(action.alert, registry, clock, action.name, action.before)
    return gate_action(action.decision, registry, clock, action.name, action.sequence)


def _announced(clock: Clock, **fields: object) -> list[Alert]:
    now = clock.now()
    fired = Alert.model_validate({**fields, "status": "firing", "started_at": now, "at": now})
    return [fired, fired.model_copy(update={"status": "resolved", "sequence": fired.sequence + 1})]
