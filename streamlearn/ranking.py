"""Choosing the slate /v1/rank returns, with the propensity of every choice logged.

Epsilon-greedy, position by position: with probability ``1 - epsilon`` the best-scored candidate
not yet placed, otherwise one drawn uniformly from those not yet placed. The propensity logged
for a position is the probability that this item was chosen there, given the items above it:
``(1 - epsilon) + epsilon / m`` for the best of the ``m`` remaining, ``epsilon / m`` for any
other. It is what an off-policy estimator (inverse propensity scoring) divides by, and the
joiner carries it into every labeled example. With ``epsilon = 0`` the slate is the top ``k``
by score and every propensity is 1.

>>> import random
>>> slate = choose_slate([("a", 0.2), ("b", 0.9), ("c", 0.5)], k=2, epsilon=0.0,
...                      rng=random.Random(0))
>>> [(p.item_id, p.position, p.propensity) for p in slate]
[('b', 0, 1.0), ('c', 1, 1.0)]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter


@dataclass(frozen=True, slots=True)
class Placed:
    item_id: str
    score: float
    position: int
    propensity: float
    explored: bool  # drawn at random rather than the best remaining


def choose_slate(
    scored: Sequence[tuple[str, float]], k: int, epsilon: float, rng: random.Random
) -> list[Placed]:
    """Place ``min(k, len(scored))`` candidates. Equal scores keep the request's order."""
    # sorted() is stable, reversed too: among equal scores the earlier candidate ranks first.
    remaining = sorted(scored, key=itemgetter(1), reverse=True)
    placed: list[Placed] = []
    for position in range(min(k, len(remaining))):
        m = len(remaining)
        explored = epsilon > 0 and rng.random() < epsilon
        index = rng.randrange(m) if explored else 0
        item_id, score = remaining.pop(index)
        propensity = epsilon / m + (1 - epsilon if index == 0 else 0.0)
        placed.append(Placed(item_id, score, position, propensity, explored))
    return placed
