"""The monitor's figures and alarms on simulated traffic served by a model that keeps learning:
a flip of the hidden preferences, a shift of one feature, outcomes that stop."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from streamlearn.alerting import Rule
from streamlearn.clock import ManualClock
from streamlearn.drift import DataDrift
from streamlearn.events import (
    JoinReport,
    LabeledExample,
    PartitionHealth,
    Recommendation,
    ShownItem,
    Slate,
)
from streamlearn.evidence import Evidence, LoggedSlate, PromotionRule, slate_terms
from streamlearn.joining import Joiner, JoinPolicy
from streamlearn.monitoring import Monitor, MonitorPolicy, history_point
from streamlearn.simulation import Deployed
from tests.unit.test_joining import T0
from tests.unit.test_label_modes import traffic

RULES = [
    Rule(name="concept-drift", metric="concept_drift", window="stream", bad="above", threshold=0.5),
    Rule(
        name="feature-drift",
        metric="psi:*",
        window="stream",
        bad="above",
        threshold=0.25,
        clear_threshold=0.1,
    ),
    Rule(name="auc-floor", metric="roc_auc", window="5m", bad="below", threshold=0.55),
    Rule(
        name="outcomes-stopped",
        metric="outcome_rate",
        window="stream",
        bad="below",
        threshold=0.01,
        for_s=20,
    ),
]


def monitor_of(clock: ManualClock, **policy: Any) -> Monitor:
    """A monitor judging from the first example (no warm-up), with these rules."""
    return Monitor(MonitorPolicy(rules=RULES, warmup_examples=0, **policy), clock)


def run(monitor: Monitor, examples: list[LabeledExample]) -> list[tuple[int, str, str]]:
    """(example index, status, dedup key) of every alert."""
    out = []
    for i, e in enumerate(examples):
        out += [(i, a.status, a.dedup_key) for a in monitor.on_example(e)]
        if i % 500 == 0:
            out += [(i, a.status, a.dedup_key) for a in monitor.evaluate()]
    return out


def test_a_flip_of_preferences_fires_concept_drift_within_a_bound_then_resolves() -> None:
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock, recovery_examples=3000)
    world = Deployed(clock)
    assert run(monitor, world.examples(15_000)) == []  # learning, then steady: no alarm
    world.shop.flip()
    after = run(monitor, world.examples(30_000))
    drift = [(i, s) for i, s, k in after if k == "ctr/concept-drift/stream"]
    assert drift[0][1] == "firing" and drift[0][0] < 1500, drift
    assert drift[-1][1] == "resolved" and len(drift) == 2, drift  # once each way
    moved = {k for _, _, k in after if "feature-drift" in k}
    assert moved <= {"ctr/feature-drift:psi:prediction/stream"}, moved  # the inputs did not move


def test_a_price_shift_raises_a_data_drift_alarm_naming_the_feature() -> None:
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock)
    world = Deployed(clock)
    assert run(monitor, world.examples(8000)) == []
    world.shop.shift_prices(3.0)
    after = run(monitor, world.examples(4000))
    fired = {k for _, s, k in after if s == "firing"}
    assert "ctr/feature-drift:psi:i:price/stream" in fired
    assert not {k for k in fired if "psi:i:category" in k or "psi:c:" in k}
    assert monitor.snapshot()["models"]["ctr"]["psi"]["i:price"] > 0.25


def test_the_rolling_metrics_and_their_windows() -> None:
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock)
    examples = Deployed(clock).examples(12_000)  # 10 minutes of event time
    run(monitor, examples)
    snapshot = monitor.snapshot()
    windows = snapshot["models"]["ctr"]["windows"]
    assert windows["5m"]["count"] < windows["1h"]["count"] == 12_000
    # One version served them all; its figures are of its settled impressions, recommended at
    # least the attribution window and the lateness (32 s) before the newest.
    newest = max(e.recommendation_time for e in examples)
    settled = [e.label for e in examples if e.recommendation_time <= newest - 32]
    version = snapshot["versions"]["ctr:v1"]["windows"]["1h"]
    assert version["count"] == len(settled) < 12_000
    assert version["conversion_rate"] == sum(settled) / len(settled)
    for w in ("5m", "1h"):
        m = windows[w]
        assert 0.6 < m["roc_auc"] < 1 and 0 < m["log_loss"] < 0.7
        assert abs(m["calibration"] - 1) < 0.25
        assert abs(m["prediction_mean"] - m["conversion_rate"]) < 0.1


def test_a_version_served_for_less_than_the_label_delay_still_gets_its_figures() -> None:
    """The trainer checkpoints every few seconds, far more often than labels settle (32 s
    here): each version's figures wait for its impressions' negatives, not for a span of its
    own, and a retired version's figures are of all its impressions."""
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock)
    examples = Deployed(clock, version_every=200).examples(4000)  # a version per 10 s
    run(monitor, examples[:250])  # v1's 10 s and a moment of v2's: nothing settled yet
    assert monitor.snapshot()["versions"]["ctr:v1"]["windows"]["1h"] == {"count": 0.0}
    run(monitor, examples[250:])
    versions = monitor.snapshot()["versions"]
    newest = max(e.recommendation_time for e in examples)
    for tag in ("ctr:v2", "ctr:v16", "ctr:v17"):  # retired long ago, recently, and settling
        served = [e for e in examples if e.model_version == tag]
        settled = [e.label for e in served if e.recommendation_time <= newest - 32]
        figures = versions[tag]["windows"]["1h"]
        assert figures["count"] == len(settled) > 0
        assert figures["conversion_rate"] == sum(settled) / len(settled)
    for tag in ("ctr:v20", "ctr:v21"):  # retired within the label delay, and the served one
        assert versions[tag]["windows"]["1h"] == {"count": 0.0}


def test_a_version_every_few_seconds_neither_splits_nor_resets_the_alarms() -> None:
    # As in the loop: the API follows a trainer that checkpoints every ~10 s (2,000 examples).
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock, recovery_examples=3000, max_versions=5)
    world = Deployed(clock, version_every=2000)
    assert run(monitor, world.examples(15_000)) == []  # no flapping between versions
    world.shop.flip()
    after = run(monitor, world.examples(30_000))
    drift = [(i, s) for i, s, k in after if k == "ctr/concept-drift/stream"]
    assert [s for _, s in drift] == ["firing", "resolved"] and drift[0][0] < 1500, drift
    snapshot = monitor.snapshot()
    assert sorted(snapshot["versions"], key=lambda t: int(t.split("v")[1])) == [
        f"ctr:v{v}" for v in range(19, 24)
    ]  # the five most recently served
    assert snapshot["models"]["ctr"]["version"] == "ctr:v23"
    assert snapshot["models"]["ctr"]["seen"] == 45_000


def test_no_window_rule_judges_a_model_before_its_warm_up() -> None:
    """A model that ranks at random from its first example: its AUC floor pages, but only once
    its warm-up has been served (before, its windows pool a young model's first versions)."""
    clock = ManualClock(1_700_000_000.0)
    monitor = Monitor(MonitorPolicy(rules=RULES, warmup_examples=2000), clock)
    rng = random.Random(1)
    served = [
        e.model_copy(update={"served_score": rng.random()}) for e in Deployed(clock).examples(4000)
    ]
    floor = [(i, s) for i, s, k in run(monitor, served) if k == "ctr/auc-floor/5m"]
    assert floor == [(2000, "firing")], floor


def test_batches_make_the_alerts_and_figures_of_one_example_at_a_time() -> None:
    """The process hands the monitor what it read at once; the cached bins, the one buffer per
    stream and the runs between due examples must not change a figure or an alert."""
    clock = ManualClock(1_700_000_000.0)
    world = Deployed(clock, version_every=2500)
    before = world.examples(9000)
    world.shop.shift_prices(3.0)
    shifted = world.examples(6000)
    world.shop.flip()
    flipped = world.examples(9000)
    # A champion from the 4,000th shifted example: drift restarts at its first example.
    promoted = [
        e.model_copy(update={"model_version": "ctr:v9"}) if i >= 1000 else e
        for i, e in enumerate(shifted[3000:] + flipped)
    ]
    policy = {"reference_renew_examples": 3000, "max_examples": 2500, "max_versions": 3}
    one, many = monitor_of(clock, **policy), monitor_of(clock, **policy)
    sizes = random.Random(7)
    alerts: dict[str, list[tuple[str, str, int]]] = {"one": [], "many": []}
    for part in (before + shifted[:3000], promoted):
        if part is promoted:
            for m in (one, many):
                m.on_champion("ctr", None)
                m.on_champion("ctr", 9)
        alerts["one"] += [
            (a.dedup_key, a.status, a.sequence) for e in part for a in one.on_example(e)
        ]
        i = 0
        while i < len(part):
            n = sizes.choice([1, 7, 499, 500, 501, 1200])
            alerts["many"] += [
                (a.dedup_key, a.status, a.sequence) for a in many.on_examples(part[i : i + n])
            ]
            i += n
    assert {k for k, _, _ in alerts["one"]} >= {
        "ctr/concept-drift/stream",
        "ctr/feature-drift:psi:i:price/stream",
    }
    assert sorted(alerts["many"]) == sorted(alerts["one"])
    a, b = one.snapshot(), many.snapshot()
    assert b["models"]["ctr"]["psi"] == pytest.approx(a["models"]["ctr"]["psi"])
    assert b["models"].keys() == a["models"].keys() and b["versions"].keys() == a["versions"].keys()
    for kind in ("models", "versions"):
        for key, figures in a[kind].items():
            for window, metrics in figures["windows"].items():
                assert b[kind][key]["windows"][window] == pytest.approx(metrics), (key, window)


def test_the_psi_is_over_the_examples_the_policy_names_whatever_the_batches() -> None:
    """After a warm-up of 100: the reference is the next 2,000 examples, renewed every 1,000
    from the last 2,000, and the PSI every 500 over the last 2,000; recomputed here from the
    rows themselves, without the monitor's cached bins."""
    clock = ManualClock(1_700_000_000.0)
    examples = Deployed(clock).examples(4600)
    policy = MonitorPolicy(rules=RULES, warmup_examples=100, reference_renew_examples=1000)
    monitor = Monitor(policy, clock)
    sizes, i = random.Random(3), 0
    while i < len(examples):
        n = sizes.choice([1, 99, 500, 777])
        monitor.on_examples(examples[i : i + n])
        i += n

    def rows(part: list[LabeledExample]) -> list[dict[str, Any]]:
        return [
            {
                **{f"c:{k}": float(v) if isinstance(v, bool) else v for k, v in e.context.items()},
                **{f"i:{k}": v for k, v in e.item_features.items()},
                "prediction": e.served_score,
            }
            for e in part
        ]

    # Renewed at the 4,100th from the 2,101st on; the last PSI at the 4,500th.
    expected = DataDrift.reference(rows(examples[2100:4100])).psi_by_feature(
        rows(examples[2500:4500])
    )
    assert monitor.snapshot()["models"]["ctr"]["psi"] == pytest.approx(expected)


def test_a_promotion_restarts_drift_detection_at_the_new_champions_first_example() -> None:
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock)
    world = Deployed(clock)
    run(monitor, world.examples(8000))
    monitor.on_champion("ctr", None)  # first reading: no alias set
    world.shop.shift_prices(3.0)
    shifted = world.examples(4000)
    assert {k for _, s, k in run(monitor, shifted) if s == "firing"} >= {
        "ctr/feature-drift:psi:i:price/stream"
    }
    monitor.on_champion("ctr", 2)  # promoted; its examples have not come yet
    run(monitor, world.examples(1000))  # still v1's: nothing restarts
    assert monitor.snapshot()["models"]["ctr"]["psi"]["i:price"] > 0.25
    promoted = [e.model_copy(update={"model_version": "ctr:v2"}) for e in world.examples(4000)]
    after = run(monitor, promoted)
    # The reference is now taken from v2's first examples, at the shifted prices: it resolves.
    assert ("resolved", "ctr/feature-drift:psi:i:price/stream") in {(s, k) for _, s, k in after}
    assert monitor.snapshot()["models"]["ctr"]["psi"]["i:price"] < 0.1


def test_a_shift_pages_then_becomes_the_new_normal_unless_a_champion_is_set() -> None:
    def shifted(champion: int | None) -> list[tuple[str, str]]:
        clock = ManualClock(1_700_000_000.0)
        monitor = monitor_of(clock, reference_renew_examples=6000)
        world = Deployed(clock)
        monitor.on_champion("ctr", champion)
        run(monitor, world.examples(8000))
        world.shop.shift_prices(3.0)
        return [(s, k) for _, s, k in run(monitor, world.examples(12_000)) if "psi:i:price" in k]

    price = "ctr/feature-drift:psi:i:price/stream"
    # Following the trainer: the reference is renewed from the shifted examples, so it resolves.
    assert shifted(None) == [("firing", price), ("resolved", price)]
    # A champion keeps the reference taken at its promotion: the alarm stays until it is moved.
    assert shifted(1) == [("firing", price)]


def report(at: float, outcomes: int, positives: int) -> JoinReport:
    return JoinReport(
        worker="w1",
        at=at,
        counters={
            "outcomes": outcomes,
            "positives": positives,
            "negatives": 10 * positives,
            "late_positive_impressions": positives // 4,
        },
        coverage=positives / (positives + positives // 4) if positives else None,
        partitions={0: PartitionHealth(pending_impressions=5, watermark=at - 3, watermark_lag_s=3)},
    )


def test_outcomes_that_stop_raise_a_join_health_alarm() -> None:
    clock = ManualClock(1_700_000_000.0)
    monitor = monitor_of(clock)
    outcomes = positives = 0
    alerts = []
    for step in range(30):
        clock.advance(5)
        if step < 10:
            outcomes, positives = outcomes + 50, positives + 20
        alerts += monitor.on_join_report(report(clock.now(), outcomes, positives))
    assert [(a.status, a.dedup_key) for a in alerts] == [("firing", "join/outcomes-stopped/stream")]
    assert alerts[0].at - (1_700_000_000.0 + 5 * 11) >= 20  # after it had lasted for_s
    join = monitor.snapshot()["join"]
    assert join["outcome_rate"] == 0 and join["watermark_lag_s"] == 3 and join["coverage"] == 0.8


def test_outcomes_left_unmatched_page_across_joiners() -> None:
    """Two joiners; half of one's outcomes never find their recommendation (a producer that
    partitions outcomes differently): the share over both pages, by the default rule."""
    clock = ManualClock(1_700_000_000.0)
    monitor = Monitor(MonitorPolicy(warmup_examples=0), clock)
    alerts = []
    for step in range(1, 30):
        clock.advance(5)
        for worker, lost in (("w1", 0), ("w2", 25 if step > 5 else 0)):
            counters = {"outcomes": 50 * step, "positives": 20 * step, "negatives": 200 * step}
            counters["unmatched_outcomes"] = lost * max(0, step - 5)
            r = report(clock.now(), 0, 0)
            alerts += monitor.on_join_report(
                r.model_copy(update={"worker": worker, "counters": counters})
            )
    paged = [(a.status, a.dedup_key) for a in alerts if "unmatched" in a.dedup_key]
    assert paged == [("firing", "join/outcomes-unmatched/stream")]
    assert 0.05 < monitor.snapshot()["join"]["unmatched_share"] < 0.25


def test_forwarded_share_is_over_every_joiner() -> None:
    """The share of input records that took the detour, over both workers' latest reports."""
    clock = ManualClock(1_700_000_000.0)
    monitor = Monitor(MonitorPolicy(warmup_examples=0), clock)
    base = report(clock.now(), 0, 0)
    for worker, forwarded in (("w1", {}), ("w2", {"outcomes": {"crc32": 30, "no_key": 20}})):
        counters = {"recommendations": 100, "outcomes": 100}
        monitor.on_join_report(
            base.model_copy(update={"worker": worker, "counters": counters, "forwarded": forwarded})
        )
    assert monitor.snapshot()["join"]["forwarded_share"] == 50 / 400


def test_join_rates_and_health_are_over_every_live_joiner() -> None:
    """Two joiners reporting in turn, one with twice the other's traffic: the rates are their
    sum whichever reported last, and a joiner silent for a minute no longer counts."""
    clock = ManualClock(1_700_000_000.0)
    monitor = Monitor(MonitorPolicy(warmup_examples=0), clock)
    base = report(clock.now(), 0, 0)
    rates = []
    for step in range(1, 6):
        for worker, per_s, lag in (("w1", 10, 2.0), ("w2", 20, 7.0)):
            clock.advance(2.5)
            counters = {"outcomes": per_s * 5 * step, "positives": step, "negatives": 3 * step}
            health = {
                0 if worker == "w1" else 1: PartitionHealth(
                    pending_impressions=4, watermark=clock.now() - lag, watermark_lag_s=lag
                )
            }
            monitor.on_join_report(
                base.model_copy(
                    update={
                        "worker": worker,
                        "at": clock.now(),
                        "counters": counters,
                        "partitions": health,
                    }
                )
            )
            rates.append(monitor.snapshot()["join"].get("outcome_rate"))
    assert rates[-4:] == [30.0] * 4
    join = monitor.snapshot()["join"]
    assert (join["watermark_lag_s"], join["pending_windows"], join["label_rate"]) == (
        7.0,
        8.0,
        0.25,
    )
    # w2 stops; w1 goes on alone.
    for step in range(6, 40):
        clock.advance(5)
        counters = {"outcomes": 50 * step, "positives": step, "negatives": 3 * step}
        monitor.on_join_report(
            base.model_copy(update={"worker": "w1", "at": clock.now(), "counters": counters})
        )
    assert monitor.snapshot()["join"]["outcome_rate"] == 10.0


def test_only_final_labels_count_when_the_join_emits_fake_negatives() -> None:
    """Label mode fnw: every impression first as a fake negative, then its final label (a
    delayed positive, or a real negative of weight 0). The monitor's figures are those of the
    final labels alone: the same as from today's join of the same impressions."""
    clock = ManualClock(1_700_000_000.0)
    final = Deployed(clock).examples(3000)
    as_fnw: list[LabeledExample] = []
    for e in final:
        as_fnw.append(e.model_copy(update={"label": False, "kind": "fake_negative"}))
        kind = "delayed_positive" if e.label else "real_negative"
        weight = 1.0 if e.label else 0.0
        as_fnw.append(e.model_copy(update={"kind": kind, "weight": weight}))
    today, fnw = monitor_of(clock), monitor_of(clock)
    run(today, final)
    run(fnw, as_fnw)
    figures = fnw.snapshot()["models"]["ctr"]["windows"]["1h"]
    expected = today.snapshot()["models"]["ctr"]["windows"]["1h"]
    # Every positive came after its fake negative; today's join has none of those.
    assert (figures.pop("delayed_positive_share"), expected.pop("delayed_positive_share")) == (
        1.0,
        0.0,
    )
    assert figures == expected
    assert figures["count"] == 3000
    snapshot = fnw.snapshot()
    positives = sum(e.label for e in final)
    assert (snapshot["provisional_examples"], snapshot["delayed_positive_examples"]) == (
        3000,
        positives,
    )


def test_label_maturity_and_the_windows_delayed_positives_follow_the_join() -> None:
    """A joiner in label mode observe (late positives corrected) feeds a monitor its examples
    and, every few records, its report. Each bucket's maturity is the share of its impressions
    whose final label has been emitted, for the buckets the joiner's watermark has passed (a
    newer one may hold recommendations it had not read when it reported); the window's share
    of delayed positives and coverage are those of its final positives."""
    clock = ManualClock(T0)
    policy = JoinPolicy(
        window_s=10.0,
        allowed_lateness_s=0.0,
        idle_timeout_s=60.0,
        label_mode="observe",
        observe_s=3.0,
        late_policy="correct",
        maturity_buckets=5,
    )
    joiner = Joiner(policy, {}, clock)
    monitor = Monitor(MonitorPolicy(rules=RULES, warmup_examples=0), clock, policy)
    opened: dict[int, int] = {}
    final: dict[int, int] = {}
    positives = delayed = late = 0
    known: set[str] = set()
    checked = 0
    for n, record in enumerate(traffic(random.Random(3), 400)):
        if isinstance(record, Recommendation):
            if record.recommendation_id not in known:
                known.add(record.recommendation_id)
                b = policy.bucket(record.event_time)
                opened[b] = opened.get(b, 0) + len(record.items)
            out = joiner.on_recommendation(record, 0)
        else:
            out = joiner.on_outcome(record, 0)
        for e in out:
            monitor.on_example(e)
            if e.kind != "fake_negative" and not e.correction:
                final[policy.bucket(e.recommendation_time)] = (
                    final.get(policy.bucket(e.recommendation_time), 0) + 1
                )
            positives += e.label
            delayed += e.label and e.kind == "delayed_positive" and not e.correction
            late += e.correction
        if n % 37 == 0:
            health = PartitionHealth(
                pending_impressions=joiner.pending_impressions(0),
                watermark=joiner.watermark(0),
                watermark_lag_s=None,
                unlabeled=joiner.unlabeled_impressions(0),
            )
            monitor.on_join_report(
                JoinReport(
                    worker="w", at=clock.now(), counters={}, coverage=None, partitions={0: health}
                )
            )
            maturity = monitor.snapshot()["maturity"]
            # Two windows and two buckets, up to the last bucket the watermark has passed.
            watermark = joiner.watermark(0)
            expected = []
            if watermark is not None and math.isfinite(watermark):  # not before both inputs
                last = min(max(opened), policy.bucket(watermark) - 1)
                expected = [
                    (policy.bucket_start(b), opened[b], final.get(b, 0) / opened[b])
                    for b in sorted(opened)
                    if last - 2 * policy.maturity_buckets - 1 <= b <= last
                ]
            assert [(m["start"], m["impressions"], m["share"]) for m in maturity] == expected
            checked += 1
    assert checked > 20
    shares = [m["share"] for m in maturity]
    assert shares[0] == 1.0 and shares[-1] < 0.5  # old buckets complete, the newest filling
    (served,) = monitor.snapshot()["models"].values()
    figures = served["windows"]["1h"]
    assert delayed and late
    assert figures["delayed_positive_share"] == pytest.approx(delayed / positives)
    assert figures["coverage"] == pytest.approx(1 - late / positives)


def slate(rid: str, t: float, converted: tuple[bool, ...], **extra: Any) -> Slate:
    items = [f"i{k}" for k in range(len(converted))]
    return Slate(
        recommendation_id=rid,
        user_id="u",
        event_time=t,
        model_version="ctr:v1",
        shown=[
            ShownItem(
                item_id=i,
                position=k,
                propensity=0.9,
                converted=c,
                value=3.0 if c else 0.0,
            )
            for k, (i, c) in enumerate(zip(items, converted, strict=True))
        ],
        **extra,
    )


def test_a_serving_versions_ranking_figures_by_hand() -> None:
    """Two slates of three slots: the first converted in slots 0 and 2, the second in slot 1.
    CTR@1 1/2, per slot 3/6, NDCG (1 + 1/2) / (1 + 1/log2 3) and (1/log2 3) / 1, averaged; the
    value 3 per conversion over six slots."""
    monitor = monitor_of(ManualClock(T0))
    monitor.on_slate(slate("r1", T0, (True, False, True)))
    monitor.on_slate(slate("r2", T0 + 1, (False, True, False)))
    figures = monitor.snapshot()["ranking"]["ctr:v1"]["1h"]
    first = (1 + 0.5) / (1 + 1 / math.log2(3))
    second = 1 / math.log2(3)
    assert figures == pytest.approx(
        {
            "slates": 2,
            "ctr_at_1": 0.5,
            "ctr_at_k": 0.5,
            "ndcg_at_k": (first + second) / 2,
            "value_per_impression": 1.5,
        }
    )


def test_every_model_whose_scores_a_slate_logged_is_replayed_over_it() -> None:
    """Slates logged with exploration, candidates and two models' scores: each model's
    evidence is what streamlearn.evidence computes from the same slates; a slate without
    exploration counts for the ranking figures only; a champion's move starts the evidence
    again."""
    monitor = monitor_of(ManualClock(T0))
    rng = random.Random(2)
    direct = {"ctr": Evidence(1e-4), "ctr-b": Evidence(1e-4)}
    for n in range(300):
        scores = {m: [round(rng.random(), 3) for _ in range(4)] for m in ("ctr:v1", "ctr-b:v2")}
        s = slate(
            f"r{n}",
            T0 + n,
            (rng.random() < 0.3, rng.random() < 0.2),
            epsilon=0.05,
            candidates=["i0", "i1", "i2", "i3"],
            scores=scores,
        )
        monitor.on_slate(s)
        logged = LoggedSlate(
            ("i0", "i1", "i2", "i3"),
            ("i0", "i1"),
            (0.9, 0.9),
            tuple(float(i.converted) for i in s.shown),
        )
        for tag, values in scores.items():
            ranked = dict(zip(("i0", "i1", "i2", "i3"), values, strict=True))
            direct[tag.split(":")[0]].update(slate_terms(logged, ranked))
    monitor.on_slate(slate("plain", T0 + 400, (True, True)))  # no exploration logged
    # A choice rarer than the weights the bounds allow (epsilon 1e-5 over four): left out.
    rare = slate("rare", T0 + 401, (True, False), epsilon=1e-5, candidates=["i0", "i1", "i2", "i3"])
    rare = rare.model_copy(
        update={
            "scores": {"ctr:v1": [0.1, 0.2, 0.3, 0.4]},
            "shown": [rare.shown[0].model_copy(update={"propensity": 2.5e-6}), rare.shown[1]],
        }
    )
    monitor.on_slate(rare)
    snapshot = monitor.snapshot()
    assert snapshot["evidence_skipped_slates"] == 1
    assert snapshot["evidence"] == {m: e.figures() for m, e in direct.items()}
    assert snapshot["ranking"]["ctr:v1"]["1d"]["slates"] == 302
    # Per window too: the day holds them all, the same estimates with fixed-sample intervals.
    for model, evidence in direct.items():
        day = snapshot["evidence_windows"][model]["1d"]
        assert day["slates"] == 300
        assert day["dr"] == pytest.approx(evidence.estimate("dr")[0])
        assert day["snips"] == pytest.approx(evidence.estimate("snips")[0])
    assert history_point(snapshot)["evidence"] == snapshot["evidence"]
    monitor.on_champion("ctr", 1)
    monitor.on_example(Deployed(ManualClock(T0)).examples(1)[0])
    monitor.on_champion("ctr", 2)
    assert monitor.snapshot()["evidence"] == {}


def test_the_gate_judges_the_served_models_evidence_and_a_serving_move_starts_it_again() -> None:
    """With the promotion rule on, a challenger that ranks the item that converts (80% of the
    time, the others 5%) first is promoted over a served champion that ranks it last, on slates
    logged uniformly at random; once the registry says the challenger is served, the evidence
    (of another logging policy) starts again and nothing is decided on what is left. Off, the
    gate decides nothing."""
    clock = ManualClock(T0)
    rule = PromotionRule(enabled=True, min_slates=200, hold_s=0, cooldown_s=0)
    monitor, off = monitor_of(clock, promotion=rule), monitor_of(clock)
    for m in (monitor, off):
        m.on_serving("ctr")
    rng = random.Random(5)
    rates = {"i0": 0.8, "i1": 0.05, "i2": 0.05}
    for n in range(1000):
        shown = rng.sample(sorted(rates), 2)
        s = Slate(
            recommendation_id=f"r{n}",
            user_id="u",
            event_time=T0 + n,
            model_version="ctr:v1",
            shown=[
                ShownItem(
                    item_id=item,
                    position=k,
                    propensity=1 / (3 - k),
                    converted=rng.random() < rates[item],
                    value=0.0,
                )
                for k, item in enumerate(shown)
            ],
            epsilon=1.0,
            candidates=sorted(rates),
            scores={"ctr:v1": [0.05, 0.05, 0.8], "ctr-b:v1": [0.8, 0.05, 0.05]},
        )
        monitor.on_slate(s)
        off.on_slate(s)
    assert off.judge() is None
    decision = monitor.judge()
    assert decision is not None and (decision.action, decision.model) == ("promote", "ctr-b")
    assert decision.figures["ctr-b"][1] > decision.figures["ctr"][2] == decision.bound
    monitor.on_serving("ctr-b")
    assert monitor.snapshot()["evidence"] == {} and monitor.snapshot()["serving"] == "ctr-b"
    assert monitor.judge() is None
