"""Automatic actions on alarms (off by default): roll the champion back when an alarm fires.

An action is itself an alert, so on-call hears of it like anything else: an ``info`` alert of
rule ``auto-rollback`` (or ``warning`` when it could not be done), fired and resolved at once
since it is over when it is announced, with its own dedup key per model and alarm.

An action may be run again after a crash (the monitor saves what it is about to do before it
does it): given the champion it saw before, a rollback that has already moved the champion away
from it changes nothing the second time, and says the same.
"""

from __future__ import annotations

from streamlearn.alerting import Alert, Severity
from streamlearn.clock import Clock
from streamlearn.errors import SnapshotError
from streamlearn.registry import CHAMPION, Registry


def auto_rollback(
    alert: Alert, registry: Registry, clock: Clock, before: int | None = None
) -> list[Alert]:
    """Roll ``alert.model``'s champion back to the version it named before; the alerts that
    say so (or say why not). ``before`` is the version served when the action was decided
    (read now when not given); a champion no longer there is not rolled back again."""
    try:
        if before is None:
            before = registry.served_version(alert.model)
        after = registry.rollback(alert.model, expected=before)
        summary = (
            f"{alert.model}: champion rolled back from v{before} to v{after} "
            f"after {alert.dedup_key} fired"
        )
        severity: Severity = "info"
        value = float(after)
    except SnapshotError as exc:
        summary = f"{alert.model}: could not roll back after {alert.dedup_key} fired: {exc}"
        severity = "warning"
        value = float(before or 0)
    now = clock.now()
    fired = Alert(
        dedup_key=f"{alert.model}/auto-rollback/{alert.rule}",
        # Continues from the alarm's own sequence, so it only grows for this key.
        sequence=2 * alert.sequence - 1,
        status="firing",
        rule="auto-rollback",
        model=alert.model,
        window=alert.window,
        metric=f"{CHAMPION}_version",
        severity=severity,
        value=value,
        threshold=float(before or 0),
        model_version=alert.model_version,
        started_at=now,
        at=now,
        summary=summary,
    )
    return [fired, fired.model_copy(update={"status": "resolved", "sequence": fired.sequence + 1})]
