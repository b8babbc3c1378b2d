"""Alarms fire once, resolve once, do not flap, and survive a restart of whoever keeps them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from streamlearn.alerting import Alarms, Rule
from streamlearn.clock import ManualClock

FLOOR = Rule(
    name="auc-floor",
    metric="rolling_auc",
    window="5m",
    bad="below",
    threshold=0.6,
    clear_threshold=0.65,
    for_s=30,
    clear_for_s=30,
    severity="critical",
)


def feed(book: Alarms, clock: ManualClock, values: list[float], every: float = 10.0) -> list[str]:
    """Each value 10 s after the last; the statuses of the alerts they made."""
    out = []
    for v in values:
        clock.advance(every)
        out += [a.status for a in book.observe("ctr", "rolling_auc", "5m", v, "ctr:v1")]
    return out


def test_a_blip_does_not_page_but_a_lasting_drop_pages_once() -> None:
    clock = ManualClock(0.0)
    book = Alarms([FLOOR], clock)
    assert feed(book, clock, [0.7, 0.5, 0.7, 0.7]) == []  # 10 s below: not for 30 s
    assert feed(book, clock, [0.5, 0.5, 0.5, 0.5]) == ["firing"]  # once, 30 s after it began
    assert feed(book, clock, [0.4] * 20) == []
    assert book.firing() == ["ctr/auc-floor/5m"]


def test_hovering_at_the_threshold_does_not_flap_and_it_resolves_once() -> None:
    clock = ManualClock(0.0)
    book = Alarms([FLOOR], clock)
    feed(book, clock, [0.5] * 5)
    # Between the threshold and the clear threshold: neither bad nor cleared.
    assert feed(book, clock, [0.61, 0.59, 0.62, 0.6, 0.64] * 4) == []
    assert feed(book, clock, [0.66, 0.59, 0.66, 0.66]) == []  # cleared, but not for 30 s
    assert feed(book, clock, [0.7] * 5) == ["resolved"]
    assert book.firing() == []


def test_the_alerts_say_what_happened_with_a_stable_key_and_a_sequence() -> None:
    clock = ManualClock(1000.0)
    book = Alarms([FLOOR], clock)
    alerts = []
    for v in [0.5] * 5 + [0.7] * 5 + [0.5] * 5:
        clock.advance(10)
        alerts += book.observe("ctr", "rolling_auc", "5m", v, "ctr:v7")
    assert [(a.status, a.sequence) for a in alerts] == [
        ("firing", 1),
        ("resolved", 2),
        ("firing", 3),
    ]
    first = alerts[0]
    assert {a.dedup_key for a in alerts} == {"ctr/auc-floor/5m"}
    assert first.model_version == "ctr:v7" and first.severity == "critical"
    assert first.value == 0.5 and first.threshold == 0.6 and first.started_at == 1040.0
    assert "rolling_auc over 5m is 0.5, below 0.6" in first.summary
    assert alerts[1].started_at == first.started_at  # the resolve names the alarm it ends


def test_each_model_and_rule_has_its_own_alarm() -> None:
    clock = ManualClock(0.0)
    lag = Rule(name="lag", metric="watermark_lag_s", window="stream", bad="above", threshold=60)
    book = Alarms([FLOOR, lag], clock)
    assert [a.dedup_key for a in book.observe("other", "watermark_lag_s", "stream", 90)] == [
        "other/lag/stream"
    ]
    assert book.observe("ctr", "rolling_auc", "1h", 0.1) == []  # no rule for that window


def test_a_restart_mid_incident_neither_pages_again_nor_forgets_to_resolve() -> None:
    clock = ManualClock(0.0)
    book = Alarms([FLOOR], clock)
    assert feed(book, clock, [0.5] * 5) == ["firing"]
    saved = json.loads(json.dumps(book.dump()))  # as it goes through Redis

    restarted = Alarms([FLOOR], clock)
    restarted.load(saved)
    assert feed(restarted, clock, [0.5] * 5) == []
    alerts = []
    for _ in range(5):
        clock.advance(10)
        alerts += restarted.observe("ctr", "rolling_auc", "5m", 0.8)
    assert [(a.status, a.sequence) for a in alerts] == [("resolved", 2)]


def test_a_clear_threshold_on_the_bad_side_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="must be on the good side"):
        Rule(name="r", metric="log_loss", bad="above", threshold=0.5, clear_threshold=0.6)


def test_a_wildcard_rule_makes_an_alarm_per_feature_that_names_it() -> None:
    clock = ManualClock(0.0)
    rule = Rule(name="feature-drift", metric="psi:*", window="stream", bad="above", threshold=0.25)
    book = Alarms([rule], clock)
    assert book.observe("ctr", "psi:i:category", "stream", 0.05) == []
    [alert] = book.observe("ctr", "psi:i:price", "stream", 0.9)
    assert alert.dedup_key == "ctr/feature-drift:psi:i:price/stream"
    assert alert.metric == "psi:i:price" and "psi:i:price" in alert.summary
