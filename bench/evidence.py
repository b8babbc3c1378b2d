"""Promote on evidence: position-aware learning, off-policy estimates and the promotion gate.

In process, with a manual clock (one slate a second; fast, deterministic), on the simulated
storefront, whose hidden truth lowers the chance of a conversion by slot. Each request offers
ten random candidates; the champion ranks them and the API's own epsilon-greedy
(:func:`streamlearn.ranking.choose_slate`, 5%) fills five slots, logging each choice's
propensity. Every model learns every logged impression (its features as the API logs them,
the slot it was shown in, its propensity).

1. **Position** (5 seeds x 4,000 slates, a position-blind champion logging): the same model
   spec three ways, ``ignore``, ``feature`` and ``ips``; then each ranks 2,000 fresh requests
   greedily and its slates' **true** conversion rate per slot comes from the hidden truth.
2. **Evidence and the gate** (20 seeds x 12,000 slates): a champion that is position-blind and
   without the segment x category cross (yesterday's model), a position-aware challenger with
   the cross, and a deliberately worse one (the aware model's ranking upside down). For each,
   after every slate, the IPS, SNIPS and DR estimates of its conversion rate per slot with 95%
   asymptotic confidence sequences (:mod:`streamlearn.evidence`), and the truth they estimate:
   its greedy picks' true conversion chance at each slot given the logged items above,
   averaged over the slates so far. The gate (DR, 1,000 slates at least, held 10 minutes,
   cool-down an hour) promotes; the new champion logs from then on.

Figures: true rates (mean over seeds); each estimator's absolute error at the end (mean over
seeds and models); ``bound_coverage``, the share of (seed, model, estimator) whose bounds hold
the truth at the end, and ``bound_coverage_every_look``, at every thousandth slate (and the DR
bounds' median width; the same under WSR's finite-sample bounds, which the gate does not use);
which model the gate promoted and after how many slates (median over seeds); promotions of any
other model (goal 0); ``exploration_cost``, the share of the aware model's true rate that 5%
exploration gives up (its epsilon-greedy slates against its greedy ones, on the same fresh
requests).
Prints figures; the last line is one JSON object. Run: ``python bench/evidence.py [SCALE]``
(SCALE shortens every run, for a quick look).
"""

from __future__ import annotations

import random
import statistics
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from common import print_figures

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample
from streamlearn.evidence import (
    ESTIMATORS,
    Evidence,
    Gate,
    LoggedSlate,
    PromotionRule,
    greedy_pick,
    slate_terms,
)
from streamlearn.learning import ModelSpec
from streamlearn.ranking import choose_slate
from streamlearn.simulation import Storefront, User
from streamlearn.training import Training

CANDIDATES, SLOTS, EPSILON = 10, 5, 0.05
POSITION_SEEDS, POSITION_SLATES = 5, 4_000
GATE_SEEDS, GATE_SLATES = 20, 12_000
RULE = PromotionRule(enabled=True, estimator="dr", min_slates=1000, hold_s=600, cooldown_s=3600)
LOOK_EVERY = 1000
FRESH_REQUESTS = 2000


class Simulation:
    """The storefront, its requests, and the models learning from what was logged."""

    def __init__(self, seed: int, specs: dict[str, ModelSpec]) -> None:
        self.shop = Storefront(world_seed=7, traffic_seed=seed)
        self.rng = random.Random(seed)
        self.clock = ManualClock(0.0)
        self.models = {name: Training(spec, self.clock) for name, spec in specs.items()}
        self.offset = 0

    def request(self) -> tuple[User, list[tuple[str, dict[str, Any]]]]:
        user = self.shop.rng.choice(self.shop.users)
        items = self.shop.rng.sample(self.shop.items, CANDIDATES)
        # As a storefront sends candidates to /v1/rank: no slot yet.
        return user, [(it.item_id, self.shop.item_features(it, 0)) for it in items]

    def scores(self, user: User, candidates: list[tuple[str, dict[str, Any]]]) -> dict[str, dict]:
        context = self.shop.context(user)
        ids = [c[0] for c in candidates]
        return {
            name: dict(zip(ids, m.learner.score_candidates(context, candidates), strict=True))
            for name, m in self.models.items()
        }

    def serve(
        self, user: User, candidates: list[tuple[str, dict[str, Any]]], by: dict[str, float]
    ) -> LoggedSlate:
        """The slate the API would serve ranking by ``by``, its conversions from the hidden
        truth, and every model learning its impressions."""
        self.clock.advance(1.0)
        placed = choose_slate(list(by.items()), SLOTS, EPSILON, self.rng)
        rewards = []
        features = dict(candidates)
        for p in placed:
            item = self.shop.item(p.item_id)
            converted = self.rng.random() < self.shop.probability(user, item, p.position)
            rewards.append(float(converted))
            example = LabeledExample(
                example_id=f"{self.offset}",
                recommendation_id=f"{self.offset}",
                user_id=user.user_id,
                item_id=p.item_id,
                position=p.position,
                propensity=p.propensity,
                served_score=p.score,
                model_version=None,
                context=self.shop.context(user),
                item_features=features[p.item_id],
                label=converted,
                recommendation_time=self.clock.now(),
            )
            for model in self.models.values():
                model.learn(example, 0, self.offset)
            self.offset += 1
        return LoggedSlate(
            tuple(features),
            tuple(p.item_id for p in placed),
            tuple(p.propensity for p in placed),
            tuple(rewards),
        )

    def true_value(self, user: User, slate: LoggedSlate, scores: dict[str, float]) -> float:
        """What ranking by ``scores`` would truly earn per slot on this slate's decisions."""
        remaining, total = list(slate.candidates), 0.0
        for slot, logged in enumerate(slate.shown):
            pick = self.shop.item(greedy_pick(remaining, scores))
            total += self.shop.probability(user, pick, slot)
            remaining.remove(logged)
        return total / len(slate.shown)

    def true_rates(self, seed: int) -> dict[str, float]:
        """Each model's greedy slates on fresh requests, by the hidden truth; and the oracle's."""
        fresh = Storefront(world_seed=7, traffic_seed=100_000 + seed)
        explore = random.Random(seed)
        totals: Counter[str] = Counter()
        for _ in range(FRESH_REQUESTS):
            user = fresh.rng.choice(fresh.users)
            items = fresh.rng.sample(fresh.items, CANDIDATES)
            candidates = [(it.item_id, fresh.item_features(it, 0)) for it in items]
            by_id = {it.item_id: it for it in items}
            rankings = {
                name: dict(zip(by_id, s, strict=True))
                for name, s in (
                    (n, m.learner.score_candidates(fresh.context(user), candidates))
                    for n, m in self.models.items()
                )
            }
            rankings["oracle"] = {i: fresh.probability(user, it, 0) for i, it in by_id.items()}
            for name, scores in rankings.items():
                top = sorted(by_id, key=lambda i: -scores[i])[:SLOTS]
                totals[name] += (
                    sum(fresh.probability(user, by_id[i], slot) for slot, i in enumerate(top))
                    / SLOTS
                )
            if "aware" in rankings:  # what exploring costs: the same ranking, epsilon-greedy
                placed = choose_slate(list(rankings["aware"].items()), SLOTS, EPSILON, explore)
                totals["aware_exploring"] += (
                    sum(fresh.probability(user, by_id[p.item_id], p.position) for p in placed)
                    / SLOTS
                )
        return {name: total / FRESH_REQUESTS for name, total in totals.items()}


def position_run(seed: int) -> dict[str, float]:
    base = {"crosses": (("segment", "category"),)}
    sim = Simulation(
        seed,
        {
            "blind": ModelSpec(**base),
            "aware": ModelSpec(**base, position="feature"),
            "ips": ModelSpec(**base, position="ips"),
        },
    )
    for _ in range(POSITION_SLATES):
        user, candidates = sim.request()
        sim.serve(user, candidates, sim.scores(user, candidates)["blind"])
    return sim.true_rates(seed)


def gate_run(seed: int) -> dict[str, Any]:
    sim = Simulation(
        seed,
        {"basic": ModelSpec(name="basic", crosses=()), "aware": ModelSpec(position="feature")},
    )
    board = ("basic", "aware", "worse")
    evidence = {name: Evidence(EPSILON / CANDIDATES) for name in board}
    # The same slates under the finite-sample bounds, for their coverage and width only.
    strict = {name: Evidence(EPSILON / CANDIDATES, bounds="empirical_bernstein") for name in board}
    truth: Counter[str] = Counter()
    gate = Gate(RULE, sim.clock)
    champion, promotions = "basic", []
    held = {(name, e): True for name in board for e in ESTIMATORS}
    for n in range(1, GATE_SLATES + 1):
        user, candidates = sim.request()
        scores = sim.scores(user, candidates)
        scores["worse"] = {i: 1.0 - p for i, p in scores["aware"].items()}
        slate = sim.serve(user, candidates, scores[champion])
        for name in board:
            terms = slate_terms(slate, scores[name])
            evidence[name].update(terms)
            strict[name].update(terms)
            truth[name] += sim.true_value(user, slate, scores[name])
        decision = gate.judge(champion, evidence)
        if decision is not None and decision.action == "promote":
            promotions.append((decision.model, n))
            champion = decision.model
        if n % LOOK_EVERY == 0:
            for name in board:
                for e in ESTIMATORS:
                    _, lower, upper = evidence[name].estimate(e)
                    held[name, e] &= lower <= truth[name] / n <= upper
    out: dict[str, Any] = {
        "promotions": promotions,
        "errors": {},
        "covered": {},
        "held": {},
        "width": {},
        "strict_covered": {},
        "strict_width": {},
    }
    for name in board:
        value = truth[name] / GATE_SLATES
        for e in ESTIMATORS:
            point, lower, upper = evidence[name].estimate(e)
            out["errors"][name, e] = abs(point - value)
            out["covered"][name, e] = lower <= value <= upper
            out["held"][name, e] = held[name, e]
            out["width"][name, e] = upper - lower
            _, lower, upper = strict[name].estimate(e)
            out["strict_covered"][name, e] = lower <= value <= upper
            out["strict_width"][name, e] = upper - lower
    return out


def main() -> None:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0  # a quicker look: 0.25
    global POSITION_SLATES, GATE_SLATES
    POSITION_SLATES, GATE_SLATES = int(POSITION_SLATES * scale), int(GATE_SLATES * scale)
    with ProcessPoolExecutor(2) as pool:
        positions = list(pool.map(position_run, range(POSITION_SEEDS)))
        gates = list(pool.map(gate_run, range(GATE_SEEDS)))
    rate = {name: statistics.mean(r[name] for r in positions) for name in positions[0]}
    first = [p[0] for g in gates for p in g["promotions"][:1]]
    wrong = sum(1 for g in gates for model, _ in g["promotions"] if model != "aware")
    after = [n for g in gates for model, n in g["promotions"][:1] if model == "aware"]
    intervals = [c for g in gates for c in g["covered"].values()]
    looks = [c for g in gates for c in g["held"].values()]
    out: dict[str, Any] = {
        "seeds": GATE_SEEDS,
        "slates_per_seed": GATE_SLATES,
        "candidates": CANDIDATES,
        "epsilon": EPSILON,
        "true_rate_position_blind": round(rate["blind"], 4),
        "true_rate_position_aware": round(rate["aware"], 4),
        "true_rate_ips": round(rate["ips"], 4),
        "true_rate_oracle": round(rate["oracle"], 4),
        "position_aware_wins": sum(r["aware"] > r["blind"] for r in positions),
        "exploration_cost": round(1 - rate["aware_exploring"] / rate["aware"], 4),
        "position_seeds": POSITION_SEEDS,
        **{
            f"{e}_abs_error": round(
                statistics.mean(
                    v for g in gates for (_, est), v in g["errors"].items() if est == e
                ),
                4,
            )
            for e in ESTIMATORS
        },
        "bound_coverage": round(sum(intervals) / len(intervals), 3),
        "bound_coverage_every_look": round(sum(looks) / len(looks), 3),
        "bound_width_dr_median": round(
            statistics.median(v for g in gates for (_, e), v in g["width"].items() if e == "dr"), 4
        ),
        "bound_coverage_empirical_bernstein": round(
            statistics.mean(c for g in gates for c in g["strict_covered"].values()), 3
        ),
        "bound_width_dr_median_empirical_bernstein": round(
            statistics.median(
                v for g in gates for (_, e), v in g["strict_width"].items() if e == "dr"
            ),
            4,
        ),
        "promoted": {
            "model": Counter(first).most_common(1)[0][0] if first else None,
            "seeds": len(after),
            "after_slates_median": int(statistics.median(after)) if after else None,
        },
        "wrong_promotions": wrong,
    }
    print_figures(out)


if __name__ == "__main__":
    main()
