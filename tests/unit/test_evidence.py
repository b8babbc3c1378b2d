"""The off-policy estimators and their confidence sequences, against hand-computed values, an
independent implementation of the published formulas, and simulated logs with a known truth."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from streamlearn.clock import ManualClock
from streamlearn.evidence import (
    ConfidenceSequence,
    Evidence,
    Gate,
    LoggedSlate,
    PromotionRule,
    SlateTerms,
    WindowEvidence,
    asymptotic_radius,
    greedy_pick,
    slate_terms,
)
from streamlearn.ranking import choose_slate


def test_slate_terms_by_hand() -> None:
    """Candidates a, b, c, d; shown c (explored, p 0.05) then a (greedy, p 0.9), c converted.
    The target scores b best, so it would not have shown c: no IPS term, its own score as DR's
    direct estimate; then, of a, b, d... b again, not a: none either."""
    logged = LoggedSlate(("a", "b", "c", "d"), ("c", "a"), (0.05, 0.9), (1.0, 0.0))
    scores = {"a": 0.3, "b": 0.6, "c": 0.2, "d": 0.1}
    t = slate_terms(logged, scores)
    assert (t.ips, t.weight) == (0.0, 0.0)
    assert t.dr == pytest.approx((0.6 + 0.6) / 2)
    # A target that agrees with the log at both slots: r/p and q + (r - q)/p, per slot.
    agree = {"a": 0.5, "b": 0.1, "c": 0.7, "d": 0.0}
    t = slate_terms(logged, agree)
    assert t.ips == pytest.approx((1.0 / 0.05 + 0.0) / 2)
    assert t.weight == pytest.approx((1 / 0.05 + 1 / 0.9) / 2)
    assert t.dr == pytest.approx((0.7 + 0.3 / 0.05 + 0.5 - 0.5 / 0.9) / 2)


def test_ties_go_to_the_earlier_candidate_as_the_api_ranks() -> None:
    scores = {"a": 0.5, "b": 0.5, "c": 0.1}
    assert greedy_pick(["b", "a", "c"], scores) == "b"
    placed = choose_slate([(i, scores[i]) for i in "bac"], k=1, epsilon=0.0, rng=random.Random(0))
    assert placed[0].item_id == "b"


def test_the_first_step_of_the_sequence_by_hand() -> None:
    """WSR's first bet is min(sqrt(2 log(2/alpha) / (1/4 * 1 * log 2)), 1/2) = 1/2; one term
    cannot exclude anything."""
    cs = ConfidenceSequence(0.0, 1.0)
    cs.update(1.0)
    assert cs.bet == 0.5
    assert cs._penalty == pytest.approx(0.25 * (-math.log(0.5) - 0.5))
    assert cs.bounds() == (0.0, 1.0)


def wsr_reference(xs: np.ndarray, alpha: float = 0.05, c: float = 0.5) -> tuple[float, float]:
    """Waudby-Smith and Ramdas (2020), Theorem 2, vectorised from the paper's definitions, for
    terms in [0, 1]: the bounds after the last term."""
    t = np.arange(1, len(xs) + 1)
    mu_hat = (0.5 + np.cumsum(xs)) / (t + 1)
    mu_prev = np.concatenate([[0.5], mu_hat[:-1]])
    sigma2 = (0.25 + np.cumsum((xs - mu_prev) ** 2)) / (t + 1)
    sigma2_prev = np.concatenate([[0.25], sigma2[:-1]])
    lam = np.minimum(np.sqrt(2 * np.log(2 / alpha) / (sigma2_prev * t * np.log(1 + t))), c)
    v = 4 * (xs - mu_prev) ** 2
    psi = (-np.log(1 - lam) - lam) / 4
    centre = np.cumsum(lam * xs) / np.cumsum(lam)
    half = (np.log(2 / alpha) + np.cumsum(v * psi)) / np.cumsum(lam)
    return max(float(centre[-1] - half[-1]), 0.0), min(float(centre[-1] + half[-1]), 1.0)


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.0), (0.0, 20.0), (-20.0, 21.0)])
def test_the_sequence_equals_the_papers_formulas(lo: float, hi: float) -> None:
    rng = np.random.default_rng(4)
    xs = lo + (hi - lo) * rng.beta(0.5, 3.0, size=3000)
    cs = ConfidenceSequence(lo, hi)
    for x in xs:
        cs.update(float(x))
    lower, upper = wsr_reference((xs - lo) / (hi - lo))
    assert cs.bounds() == pytest.approx((lo + (hi - lo) * lower, lo + (hi - lo) * upper))
    assert cs.mean == pytest.approx(float(xs.mean()))


def test_the_sequence_holds_at_every_look_in_95_runs_of_100() -> None:
    """Watched after every term, the bounds of 200 runs of 2,000 Bernoulli(0.3) terms ever
    exclude 0.3 in at most 5% of the runs (plus the noise of 200 runs), and shrink."""
    rng = random.Random(1)
    crossed, widths = 0, []
    for _ in range(200):
        cs = ConfidenceSequence(0.0, 1.0)
        ever = False
        for _ in range(2000):
            cs.update(float(rng.random() < 0.3))
            lower, upper = cs.bounds()
            ever = ever or not lower <= 0.3 <= upper
        crossed += ever
        widths.append(upper - lower)
    assert crossed / 200 <= 0.08, crossed
    assert max(widths) < 0.12


def test_the_asymptotic_radius_by_hand() -> None:
    """At the sample size it is tuned for, rho^2 n = -2 log a + log(1 - 2 log a) = 7.9362 for
    a = 0.05, and the radius is sqrt(2 (7.9362 + 1) / 7.9362 * log(sqrt(8.9362) / 0.05)) / sqrt(n)
    = 3.0352 / sqrt(n): 1.55 times the fixed-n 1.96, the price of looking at every slate."""
    assert asymptotic_radius(1, 0.05, 1) == pytest.approx(3.0352, abs=1e-4)
    assert asymptotic_radius(400, 0.05, 400) == pytest.approx(3.0352 / 20, abs=1e-5)
    # Looser before the tuned size, and after it shrinking more slowly than 1 / sqrt(n).
    assert asymptotic_radius(100, 0.05, 400) * 10 > 3.0352
    assert asymptotic_radius(40_000, 0.05, 400) * 200 > 3.0352


def test_a_term_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        ConfidenceSequence(0.0, 1.0).update(1.5)


@pytest.mark.parametrize("bounds", ["asymptotic", "empirical_bernstein"])
def test_each_estimator_covers_a_known_policys_value_on_simulated_logs(bounds: str) -> None:
    """Four candidates with known conversion rates per slot; the log is epsilon-greedy by one
    ranking, the target ranks otherwise. Over 40 runs of 3,000 slates each estimator's 95%
    bounds cover the target's true value (its picks' rates, given the logged items above) in
    at least 90% of the runs, and DR's error is the smallest (its direct model is good)."""
    epsilon, items = 0.2, ("a", "b", "c", "d")
    rate = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.05}
    position_factor = (1.0, 0.6)
    logger = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3}
    target = {i: rate[i] * 0.8 + 0.01 for i in items}  # ranks b, c, a, d: a good direct model
    covered = {"ips": 0, "snips": 0, "dr": 0}
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    for run in range(40):
        rng = random.Random(run)
        evidence = Evidence(epsilon / len(items), bounds=bounds)  # type: ignore[arg-type]
        truth = 0.0
        for _ in range(3000):
            placed = choose_slate([(i, logger[i]) for i in items], 2, epsilon, rng)
            rewards = tuple(
                float(rng.random() < rate[p.item_id] * position_factor[p.position]) for p in placed
            )
            slate = LoggedSlate(
                items,
                tuple(p.item_id for p in placed),
                tuple(p.propensity for p in placed),
                rewards,
            )
            evidence.update(slate_terms(slate, target))
            remaining, value = list(items), 0.0
            for j, p in enumerate(placed):
                value += rate[greedy_pick(remaining, target)] * position_factor[j]
                remaining.remove(p.item_id)
            truth += value / len(placed)
        truth /= 3000
        for name in covered:
            point, lower, upper = evidence.estimate(name)  # type: ignore[arg-type]
            covered[name] += lower <= truth <= upper
            errors[name].append(abs(point - truth))
    assert all(n >= 36 for n in covered.values()), covered
    mean_error = {name: sum(e) / len(e) for name, e in errors.items()}
    assert mean_error["dr"] < mean_error["ips"], mean_error


class Figures:
    """A model's evidence as the gate reads it: slates and (estimate, lower, upper)."""

    def __init__(self, point: float, lower: float, upper: float, n: int = 5000) -> None:
        self.n, self.figures = n, (point, lower, upper)

    def estimate(self, estimator: str) -> tuple[float, float, float]:
        return self.figures


def test_the_gate_promotes_a_challenger_proven_better_for_the_hold_time_then_cools_down() -> None:
    clock = ManualClock(0.0)
    gate = Gate(PromotionRule(enabled=True, hold_s=60, cooldown_s=600), clock)
    champion = Figures(0.13, 0.12, 0.14)
    board = {"ctr": champion, "aware": Figures(0.2, 0.15, 0.25), "worse": Figures(0.03, 0.0, 0.08)}
    assert gate.judge("ctr", board) is None  # ahead, not yet held
    clock.advance(30)
    board["aware"] = Figures(0.2, 0.139, 0.25)  # dips under the champion's upper bound
    assert gate.judge("ctr", board) is None
    clock.advance(40)
    board["aware"] = Figures(0.2, 0.15, 0.25)
    assert gate.judge("ctr", board) is None  # the hold starts again
    clock.advance(60)
    decision = gate.judge("ctr", board)
    assert decision is not None and (decision.action, decision.model) == ("promote", "aware")
    assert decision.bound == 0.14 and "beat the champion's upper bound 0.1400" in decision.summary()
    # Now the champion, it is judged against the others; one far better still waits out the
    # cool-down.
    board["better"] = Figures(0.4, 0.3, 0.5)
    for _ in range(9):
        clock.advance(60)
        assert gate.judge("aware", board) is None
    clock.advance(60)
    decision = gate.judge("aware", board)
    assert decision is not None and decision.model == "better"


def test_the_gate_needs_enough_slates_and_rolls_back_a_promotion_that_falls_short() -> None:
    clock = ManualClock(0.0)
    gate = Gate(PromotionRule(enabled=True, hold_s=0, min_slates=1000), clock)
    board = {"ctr": Figures(0.13, 0.12, 0.14), "aware": Figures(0.3, 0.2, 0.4, n=999)}
    assert gate.judge("ctr", board) is None
    board["aware"] = Figures(0.3, 0.2, 0.4)
    promoted = gate.judge("ctr", board)
    assert promoted is not None and promoted.action == "promote"
    board["aware"] = Figures(0.14, 0.135, 0.145)  # worse than hoped, not proven worse
    assert gate.judge("aware", board) is None
    board["aware"] = Figures(0.1, 0.08, 0.139)  # proven below the bound it beat
    rolled = gate.judge("aware", board)
    assert rolled is not None and (rolled.action, rolled.model) == ("rollback", "aware")
    assert "fell below the bound it was promoted on (0.1400)" in rolled.summary()
    assert gate.judge("aware", board) is None  # once


def test_until_a_model_has_earned_terms_its_bounds_are_the_finite_sample_ones() -> None:
    """A model that never agrees with the log has no IPS term but 0 yet: its spread is 0, and
    asymptotic bounds would shrink to a point. Until min_informative slates have earned a term,
    the finite-sample bounds stand."""
    evidence = Evidence(0.05 / 10, min_informative=3)
    strict = Evidence(0.05 / 10, bounds="empirical_bernstein")
    nothing = SlateTerms(ips=0.0, weight=0.0, dr=0.1)
    for _ in range(500):
        evidence.update(nothing)
        strict.update(nothing)
    assert evidence.estimate("ips") == strict.estimate("ips")
    assert evidence.estimate("ips")[2] > 0.05  # not a point at 0
    for _ in range(3):
        evidence.update(SlateTerms(ips=40.0, weight=200.0, dr=40.0))
    # The asymptotic ones from here.
    assert evidence.estimate("ips")[1:] != evidence._sequence_bounds("ips")


def test_a_windows_estimates_are_the_means_of_its_slates_terms_with_fixed_sample_intervals() -> (
    None
):
    """Three slates in the window, the first evicted when the fourth comes 11 s later: IPS and
    DR are the means of the last three terms, SNIPS their IPS over their weights, each with
    1.96 standard errors (SNIPS's by the delta method)."""
    window = WindowEvidence(span=10.0)
    terms = [
        SlateTerms(ips=9.0, weight=9.0, dr=5.0),
        SlateTerms(ips=0.0, weight=2.0, dr=0.2),
        SlateTerms(ips=2.0, weight=4.0, dr=0.6),
        SlateTerms(ips=1.0, weight=1.0, dr=0.4),
    ]
    for at, t in zip((0.0, 5.0, 8.0, 11.0), terms, strict=True):
        window.add(at, t)
    kept = terms[1:]
    figures = window.figures()
    assert figures["slates"] == 3
    ips = [t.ips for t in kept]
    assert figures["ips"] == pytest.approx(statistics.mean(ips))
    half = 1.959964 * statistics.stdev(ips) / math.sqrt(3)
    assert figures["ips_lower"] == pytest.approx(max(1.0 - half, 0.0))
    assert figures["ips_upper"] == 1.0  # clipped to a rate
    assert figures["dr"] == pytest.approx(0.4)
    dr_half = 1.959964 * statistics.stdev([0.2, 0.6, 0.4]) / math.sqrt(3)
    assert (figures["dr_lower"], figures["dr_upper"]) == pytest.approx(
        (0.4 - dr_half, 0.4 + dr_half)
    )
    snips = sum(ips) / sum(t.weight for t in kept)
    residuals = [t.ips - snips * t.weight for t in kept]
    snips_half = (
        1.959964 * statistics.stdev(residuals) / (sum(t.weight for t in kept) / 3) / math.sqrt(3)
    )
    assert figures["snips"] == pytest.approx(snips)
    assert figures["snips_lower"] == pytest.approx(max(snips - snips_half, 0.0))
