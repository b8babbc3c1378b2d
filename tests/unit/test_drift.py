"""Drift: a rise of the loss is caught within a bounded number of examples and clears after
recovery; a shifted feature stands out by its PSI while the others stay low."""

from __future__ import annotations

import math
import random

import pytest

from streamlearn.drift import ConceptDrift, DataDrift, FeatureProfile
from streamlearn.metrics import psi


def losses(rng: random.Random, p_error: float, n: int) -> list[float]:
    """Log losses of a model that is confidently wrong on a share ``p_error`` of examples."""
    return [-math.log(0.1) if rng.random() < p_error else -math.log(0.9) for _ in range(n)]


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_rise_of_the_loss_is_caught_within_a_bound_and_clears_after_recovery(
    detector: str,
) -> None:
    rng = random.Random(0)
    watch = ConceptDrift(detector, recovery_examples=1500)  # type: ignore[arg-type]
    assert not any(watch.update(x) for x in losses(rng, 0.1, 3000))  # stable: no alarm
    assert watch.value == 0.0
    after = [watch.update(x) for x in losses(rng, 0.5, 1000)]  # the concept changes
    assert True in after and after.index(True) < 300, after.index(True) if True in after else None
    assert watch.value == 1.0
    recovered = [watch.update(x) for x in losses(rng, 0.1, 4000)]  # the model has relearned
    assert watch.value == 0.0
    assert not any(recovered[-2000:])  # the fall of the loss is not drift


def test_the_mean_kept_beside_adwin_is_adwins_own() -> None:
    """ConceptDrift keeps ADWIN's mean instead of asking it at every update: it must be the
    mean ADWIN gives, through rises, falls (detected, not alarms) and recoveries."""
    rng = random.Random(4)
    watch = ConceptDrift("adwin", recovery_examples=1500)
    stream = [x for p in (0.1, 0.5, 0.1, 0.02, 0.5, 0.1) for x in losses(rng, p, 6000)]
    replaced = 0
    for x in stream:
        detector = watch.detector
        watch.update(x)
        if watch.detector is not detector:  # a fresh one for the new normal: asked at its first
            replaced += 1
            continue
        assert watch._mean() == watch.detector.estimation
    assert watch.detections >= 2 and replaced >= 2


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_rise_that_the_model_slowly_relearns_is_one_incident(detector: str) -> None:
    rng = random.Random(2)
    watch = ConceptDrift(detector, recovery_examples=1500)  # type: ignore[arg-type]
    stream = losses(rng, 0.1, 3000)
    stream += losses(rng, 0.45, 2000)  # the concept changes
    for step in range(10):  # the model relearns, a little at a time
        stream += losses(rng, 0.45 - 0.035 * step, 600)
    stream += losses(rng, 0.1, 6000)
    values = []
    for x in stream:
        watch.update(x)
        values.append(watch.value)
    edges = [(i, v) for i, v in enumerate(values) if i and v != values[i - 1]]
    assert [v for _, v in edges] == [1.0, 0.0], edges  # fires once, resolves once
    assert edges[1][0] > 3000 + 2000 + 4000  # not before the loss is nearly back


def test_psi_reads_as_the_usual_scale() -> None:
    same = psi({"a": 500, "b": 300, "c": 200}, {"a": 510, "b": 290, "c": 200})
    shifted = psi({"a": 500, "b": 300, "c": 200}, {"a": 200, "b": 300, "c": 500})
    assert same < 0.01 < 0.25 < shifted
    assert psi({"a": 10}, {"b": 10}) > 1  # nothing in common: far beyond any threshold


def test_a_shifted_feature_stands_out_and_the_others_do_not() -> None:
    rng = random.Random(1)

    def rows(n: int, price_mean: float, toys_share: float) -> list[dict[str, float | str]]:
        return [
            {
                "i:price": rng.gauss(price_mean, 1.0),
                "i:category": "toys" if rng.random() < toys_share else rng.choice("abcd"),
                "c:mobile": float(rng.random() < 0.6),
            }
            for _ in range(n)
        ]

    drift = DataDrift.reference(rows(5000, 10.0, 0.2))
    steady = drift.psi_by_feature(rows(2000, 10.0, 0.2))
    assert max(steady.values()) < 0.05, steady
    moved = drift.psi_by_feature(rows(2000, 11.5, 0.2))
    assert moved["i:price"] > 0.25 and moved["i:category"] < 0.05 and moved["c:mobile"] < 0.05
    recat = drift.psi_by_feature(rows(2000, 10.0, 0.6))
    assert recat["i:category"] > 0.25 and recat["i:price"] < 0.05


def test_profiles_bin_unseen_values_as_other() -> None:
    cats = FeatureProfile.of(["a", "b", "a"])
    assert cats.kind == "category" and cats.bin("zzz") == "(other)"
    nums = FeatureProfile.of([float(i) for i in range(100)])
    assert nums.kind == "number" and nums.bin(-5.0) == "b0" and nums.bin(1e9) == "b9"
