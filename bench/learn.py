"""How much the trainer's learning path costs over raw River, on the same examples.

Three runs over one list of simulated labeled examples, in this process:

* raw River: the same pipeline's ``learn_one`` on feature dicts built beforehand;
* raw River with progressive validation: ``predict_proba_one`` and a ROC AUC update first;
* streamlearn: ``Training.learn`` (features, progressive validation with three metrics, offsets).

Then the cost of one snapshot sign + verify at the end. Prints figures and ratios; the last line
is one JSON object. Run: ``python bench/learn.py [N]``.
"""

from __future__ import annotations

import json
import sys
import time

from river import metrics

from streamlearn.clock import SystemClock
from streamlearn.events import LabeledExample
from streamlearn.learning import ModelSpec
from streamlearn.simulation import Storefront
from streamlearn.snapshots import Snapshot
from streamlearn.training import Training, example_features


def examples(n: int) -> list[LabeledExample]:
    shop = Storefront(world_seed=7, traffic_seed=1)
    out: list[LabeledExample] = []
    while len(out) < n:
        user, slate = shop.impressions()
        for pos, item in enumerate(slate):
            out.append(
                LabeledExample(
                    example_id=f"{len(out)}:{item.item_id}",
                    recommendation_id=str(len(out)),
                    user_id=user.user_id,
                    item_id=item.item_id,
                    position=pos,
                    propensity=1.0,
                    served_score=None,
                    model_version=None,
                    context=shop.context(user),
                    item_features=shop.item_features(item, pos),
                    label=shop.rng.random() < shop.probability(user, item, pos),
                    recommendation_time=0.0,
                )
            )
    return out[:n]


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    spec = ModelSpec()
    data = examples(n)
    xs = [(example_features(spec, e), e.label) for e in data]

    model = spec.build()
    t = time.perf_counter()
    for x, y in xs:
        model.learn_one(x, y)
    raw = time.perf_counter() - t

    model, auc = spec.build(), metrics.ROCAUC()
    t = time.perf_counter()
    for x, y in xs:
        auc.update(y, model.predict_proba_one(x).get(True, 0.5))
        model.learn_one(x, y)
    raw_pv = time.perf_counter() - t

    training = Training(spec, SystemClock(), every_n=10**9, every_s=1e9)
    t = time.perf_counter()
    for offset, e in enumerate(data):
        training.learn(e, 0, offset)
    ours = time.perf_counter() - t

    snap = training.snapshot(1)
    t = time.perf_counter()
    blob = snap.sign(b"key")
    Snapshot.verify(blob, b"key")
    snapshot_ms = (time.perf_counter() - t) * 1000

    figures = {
        "examples": n,
        "raw_river_per_s": round(per_second(n, raw)),
        "raw_river_progressive_per_s": round(per_second(n, raw_pv)),
        "streamlearn_per_s": round(per_second(n, ours)),
        "ratio_vs_raw_progressive": round(ours / raw_pv, 2),
        "ratio_vs_raw_learn_only": round(ours / raw, 2),
        "snapshot_bytes": len(blob),
        "snapshot_sign_verify_ms": round(snapshot_ms, 2),
    }
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
