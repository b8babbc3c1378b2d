"""Label modes against delayed conversions: which model is fresher and better calibrated.

In process, with a manual clock (fast, deterministic): the simulated storefront's impressions,
one recommendation (five items) a second, convert by its hidden truth after a realistic delay:
exponential with a mean of a tenth of the attribution window for most, and for 15% a long tail
from half the window to three windows (some land after it, and are negatives by attribution).
The customers' tastes turn over half-way. Each mode runs the join's own code (``Joiner``, fed
in event time) and the trainer's (``Training``), and every impression is scored by the model as
it was when the impression was served, against the impression's true final label (converted
within the window), from the simulator's hidden truth:

* ``window``: today's join (a negative when the window closes), no correction;
* ``fnw``: every impression at once as a negative, a positive duplicate on conversion, learned
  with fake-negative weights (``fnw_weight``); ``fnc``: the same stream, fake-negative
  calibration;
* ``observe``: ES-DFM's observation window (a tenth of the attribution window), its weights.

Every mode learns the same spec: a logistic regression with plain SGD (0.05), which keeps
adapting (AdaGrad's decaying rates hide every mode's reaction to the change alike). Figures are
means over seeds, from the end of the first window on; ``*_after_change`` over the first window
after the change. Prints figures; the last line is one JSON object. Run: ``python bench/delay.py``.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

from common import print_figures

from streamlearn.clock import ManualClock
from streamlearn.events import Outcome, Recommendation, SlateItem
from streamlearn.joining import Joiner, JoinPolicy
from streamlearn.learning import ModelSpec
from streamlearn.metrics import auc, columns, log_losses
from streamlearn.simulation import Storefront
from streamlearn.training import Training

WINDOW_S = 1800.0
EVERY_S = 1.0  # one recommendation a second
T0 = 1_750_000_000.0
LEARNER = {"optimizer": "sgd", "learning_rate": 0.05}  # see the docstring
MODES = {
    "window": ({"label_mode": "window"}, "none"),
    "fnw": ({"label_mode": "fnw"}, "fnw"),
    "fnc": ({"label_mode": "fnw"}, "fnc"),
    "observe": ({"label_mode": "observe", "observe_s": WINDOW_S / 10}, "esdfm"),
}


@dataclass(frozen=True)
class Served:
    at: float
    score: float
    label: bool  # converted within the window: the impression's true final label


def traffic(n_recs: int, seed: int) -> tuple[list[Recommendation], list[Outcome], dict[str, bool]]:
    """Recommendations, the outcomes they cause (any time later) and each impression's true
    final label. The tastes turn over at the run's half."""
    shop = Storefront(world_seed=7, traffic_seed=seed)
    rng = random.Random(seed)
    recs, outs, truth = [], [], {}
    for n in range(n_recs):
        if n == n_recs // 2:
            shop.flip()
        now = T0 + n * EVERY_S
        user, slate = shop.impressions()
        rid = f"{seed}-{n}"
        items = [
            SlateItem(
                item_id=it.item_id,
                position=pos,
                propensity=1.0,
                features=shop.item_features(it, pos),
            )
            for pos, it in enumerate(slate)
        ]
        recs.append(
            Recommendation(
                recommendation_id=rid,
                user_id=user.user_id,
                event_time=now,
                context=shop.context(user),
                items=items,
            )
        )
        for pos, it in enumerate(slate):
            converted = rng.random() < shop.probability(user, it, pos)
            delay = (
                rng.uniform(0.5, 3.0) * WINDOW_S
                if rng.random() < 0.15
                else rng.expovariate(10 / WINDOW_S)
            )
            truth[f"{rid}:{it.item_id}"] = converted and delay <= WINDOW_S
            if converted:
                outs.append(
                    Outcome(
                        outcome_id=f"o{rid}:{it.item_id}",
                        recommendation_id=rid,
                        user_id=user.user_id,
                        item_id=it.item_id,
                        kind="click",
                        event_time=now + delay,
                    )
                )
    return recs, outs, truth


def run(
    mode: str, recs: list[Recommendation], outs: list[Outcome], truth: dict[str, bool]
) -> list[Served]:
    join_extra, correction = MODES[mode]
    clock = ManualClock(T0)
    policy = JoinPolicy.model_validate(
        {"window_s": WINDOW_S, "allowed_lateness_s": 0.0, "idle_timeout_s": 1e9, **join_extra}
    )
    joiner = Joiner(policy, {}, clock)
    spec = ModelSpec(learner=LEARNER, delay_correction=correction)
    training = Training(spec, clock)
    events = sorted(
        [(r.event_time, 0, i) for i, r in enumerate(recs)]
        + [(o.event_time, 1, i) for i, o in enumerate(outs)]
    )
    served: list[Served] = []
    offset = 0

    def learn(examples: list) -> None:
        nonlocal offset
        for e in examples:
            training.learn(e, 0, offset)
            offset += 1

    for at, kind, i in events:
        clock._t = at
        if kind == 0:
            rec = recs[i]
            # Served by the model as it is now, through the API's own scoring path.
            candidates = [(item.item_id, item.features) for item in rec.items]
            scores = training.learner.score_candidates(rec.context, candidates)
            for item, score in zip(rec.items, scores, strict=True):
                label = truth[f"{rec.recommendation_id}:{item.item_id}"]
                served.append(Served(at, score, label))
            learn(joiner.on_recommendation(rec, 0))
        else:
            learn(joiner.on_outcome(outs[i], 0))
    return served


def figures(served: list[Served]) -> dict[str, float]:
    p, y = columns([(s.score, s.label) for s in served])
    loss = float(log_losses(p, y).mean())
    return {"logloss": loss, "auc": auc(p, y), "calibration": float(p.mean() / y.mean())}


def main() -> None:
    n_recs = int(sys.argv[1]) if len(sys.argv) > 1 else 12_000
    seeds = (1, 2, 3)
    totals: dict[str, float] = {}
    for seed in seeds:
        recs, outs, truth = traffic(n_recs, seed)
        change = T0 + (n_recs // 2) * EVERY_S
        stretch = WINDOW_S
        for mode in MODES:
            served = run(mode, recs, outs, truth)
            # The first window is every mode's warm-up; the change's stretch comes after it.
            settled = [s for s in served if s.at >= T0 + WINDOW_S]
            after = [s for s in served if change <= s.at < change + stretch]
            for suffix, part in (("", settled), ("_after_change", after)):
                for metric, value in figures(part).items():
                    key = f"{metric}_{mode}{suffix}"
                    totals[key] = totals.get(key, 0.0) + value / len(seeds)
    out: dict[str, float | int | str] = {
        "impressions_per_seed": n_recs * 5,
        "seeds": len(seeds),
        "window_s": WINDOW_S,
        **{k: round(v, 4) for k, v in sorted(totals.items())},
    }
    best = min(("fnw", "fnc", "observe"), key=lambda m: totals[f"logloss_{m}"])
    out["best_mode"] = best
    out["logloss_gain_best_vs_window"] = round(
        1 - totals[f"logloss_{best}"] / totals["logloss_window"], 4
    )
    out["logloss_gain_best_vs_window_after_change"] = round(
        1 - totals[f"logloss_{best}_after_change"] / totals["logloss_window_after_change"], 4
    )
    print_figures(out)


if __name__ == "__main__":
    main()
