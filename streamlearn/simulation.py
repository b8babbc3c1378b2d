"""A simulated storefront with a known ground truth.

The hidden world: users belong to segments, items to categories; each segment has its own taste
for each category, each item its own appeal, and lower slate positions are seen less. The chance
that an impression converts is

    sigmoid(base + taste[segment][category] + appeal[item] - 0.25 * position + 0.3 * mobile)

Conversions arrive after an exponentially distributed delay, so some land after any window; a
share of converting impressions also sends a later add-to-cart, a second outcome for the same
impression that the join must not count twice.

The world is fixed by ``world_seed``; traffic is drawn from ``traffic_seed``, so a held-out sample
from another traffic seed tests a model on the same world it learned.

>>> shop = Storefront(n_users=10, n_items=20, slate_size=3, world_seed=1, traffic_seed=2)
>>> rec, outcomes = shop.recommend(now=1000.0)
>>> len(rec.items), all(o.event_time > 1000.0 for o in outcomes)
(3, True)
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass

from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample, Outcome, Recommendation, SlateItem
from streamlearn.features import example_features
from streamlearn.learning import Learner, ModelSpec

SEGMENTS = ("bargain", "premium", "family", "student", "gamer")
CATEGORIES = ("toys", "books", "garden", "audio", "games", "kitchen", "sports", "fashion")
BASE = -2.2


@dataclass(frozen=True)
class User:
    user_id: str
    segment: str
    mobile: bool


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price: float


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class Storefront:
    def __init__(
        self,
        n_users: int = 500,
        n_items: int = 200,
        slate_size: int = 5,
        world_seed: int = 7,
        traffic_seed: int = 0,
        mean_delay_s: float = 2.0,
        cart_share: float = 0.3,
        position_effect: float = 0.25,
    ) -> None:
        world = random.Random(world_seed)
        self.taste = {s: {c: world.gauss(0.0, 1.3) for c in CATEGORIES} for s in SEGMENTS}
        self.users = [
            User(f"u{i}", world.choice(SEGMENTS), world.random() < 0.6) for i in range(n_users)
        ]
        self.items = [
            Item(f"i{i}", world.choice(CATEGORIES), round(world.uniform(2, 200), 2))
            for i in range(n_items)
        ]
        self.appeal = {it.item_id: world.gauss(0.0, 0.6) for it in self.items}
        self._by_id = {it.item_id: it for it in self.items}
        self.slate_size = slate_size
        self.mean_delay_s = mean_delay_s
        self.cart_share = cart_share
        self.rng = random.Random(traffic_seed)
        self.price_factor = 1.0
        self.position_effect = position_effect

    def probability(self, user: User, item: Item, position: int) -> float:
        z = (
            BASE
            + self.taste[user.segment][item.category]
            + self.appeal[item.item_id]
            - self.position_effect * position
            + (0.3 if user.mobile else 0.0)
        )
        return _sigmoid(z)

    @staticmethod
    def context(user: User) -> dict[str, float | bool | str]:
        return {"segment": user.segment, "mobile": user.mobile}

    def item_features(self, item: Item, position: int) -> dict[str, float | bool | str]:
        price = item.price * self.price_factor / 100.0
        return {"category": item.category, "price": price, "position": float(position)}

    def flip(self) -> None:
        """A concept change: every segment's taste for every category turns to its opposite."""
        self.taste = {s: {c: -w for c, w in t.items()} for s, t in self.taste.items()}

    def shift_prices(self, factor: float) -> None:
        """A data change: every price as served is multiplied by ``factor`` (tastes unchanged)."""
        self.price_factor = factor

    def impressions(self) -> tuple[User, list[Item]]:
        user = self.rng.choice(self.users)
        return user, self.rng.sample(self.items, self.slate_size)

    def recommend(self, now: float) -> tuple[Recommendation, list[Outcome]]:
        """One recommendation served at ``now`` and the outcomes it will cause, in the future."""
        user, slate = self.impressions()
        rid = uuid.UUID(int=self.rng.getrandbits(128), version=4).hex
        propensity = self.slate_size / len(self.items)
        rec = Recommendation(
            recommendation_id=rid,
            user_id=user.user_id,
            event_time=now,
            context=self.context(user),
            items=[
                SlateItem(
                    item_id=it.item_id,
                    position=pos,
                    propensity=propensity,
                    features=self.item_features(it, pos),
                )
                for pos, it in enumerate(slate)
            ],
            model_version=None,
        )
        return rec, self.respond(rid, user, slate, now)

    def rank_request(self, candidates: int, k: int) -> tuple[User, dict[str, object]]:
        """A user and the body of a ``POST /v1/rank`` for ``candidates`` random items, as a
        storefront that lets streamlearn choose the slate would send it."""
        user = self.rng.choice(self.users)
        items = self.rng.sample(self.items, min(candidates, len(self.items)))
        body = {
            "user_id": user.user_id,
            "context": self.context(user),
            "items": [
                {"item_id": it.item_id, "features": self.item_features(it, 0)} for it in items
            ],
            "k": k,
        }
        return user, body

    def labeled_examples(self, n: int, start: float = 0.0) -> list[LabeledExample]:
        """``n`` impressions labeled by the hidden truth, as the joiner would emit them for
        random slates (no model served them), 10 ms apart from ``start``: for the benches."""
        out: list[LabeledExample] = []
        while len(out) < n:
            user, slate = self.impressions()
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
                        context=self.context(user),
                        item_features=self.item_features(item, pos),
                        label=self.rng.random() < self.probability(user, item, pos),
                        recommendation_time=start + len(out) * 0.01,
                    )
                )
        return out[:n]

    def item(self, item_id: str) -> Item:
        return self._by_id[item_id]

    def respond(self, rid: str, user: User, slate: list[Item], now: float) -> list[Outcome]:
        """What ``user`` will do, shown ``slate`` in this order at ``now``: outcomes in the
        future, from the hidden preferences."""
        outcomes: list[Outcome] = []
        for pos, it in enumerate(slate):
            if self.rng.random() >= self.probability(user, it, pos):
                continue
            at = now + self.rng.expovariate(1.0 / self.mean_delay_s)
            outcomes.append(self._outcome(rid, user, it, "click", at))
            if self.rng.random() < self.cart_share:
                later = at + self.rng.expovariate(1.0 / self.mean_delay_s)
                outcomes.append(self._outcome(rid, user, it, "add_to_cart", later, it.price))
        return outcomes

    def _outcome(
        self, rid: str, user: User, item: Item, kind: str, at: float, value: float = 0.0
    ) -> Outcome:
        return Outcome.model_validate(
            {
                "outcome_id": uuid.UUID(int=self.rng.getrandbits(128), version=4).hex,
                "recommendation_id": rid,
                "user_id": user.user_id,
                "item_id": item.item_id,
                "kind": kind,
                "value": value,
                "event_time": at,
            }
        )


class Deployed:
    """Labeled examples as the loop makes them, without Kafka: a storefront served by a model
    that learns from every example right after serving it (the served score is the model's
    prediction before it learns), one impression every 50 ms of the clock's time. For the
    monitor's tests and benchmark: ``shop.flip()`` and ``shop.shift_prices()`` inject changes.
    With ``version_every`` the served version changes every so many impressions, as when the API
    follows a trainer that checkpoints often."""

    def __init__(
        self, clock: ManualClock, traffic_seed: int = 5, version_every: int | None = None
    ) -> None:
        self.shop = Storefront(world_seed=7, traffic_seed=traffic_seed)
        self.learner = Learner(ModelSpec())
        self.clock = clock
        self.version_every = version_every
        self.n = 0

    def examples(self, count: int) -> list[LabeledExample]:
        out: list[LabeledExample] = []
        while len(out) < count:
            user, slate = self.shop.impressions()
            for pos, item in enumerate(slate):
                self.clock.advance(0.05)
                self.n += 1
                e = LabeledExample(
                    example_id=f"{self.n}",
                    recommendation_id=f"{self.n}",
                    user_id=user.user_id,
                    item_id=item.item_id,
                    position=pos,
                    propensity=1.0,
                    served_score=0.5,
                    model_version=f"ctr:v{1 + self.n // self.version_every}"
                    if self.version_every
                    else "ctr:v1",
                    context=self.shop.context(user),
                    item_features=self.shop.item_features(item, pos),
                    label=self.shop.rng.random() < self.shop.probability(user, item, pos),
                    recommendation_time=self.clock.now(),
                )
                score = self.learner.learn_one(example_features(ModelSpec(), e), e.label)
                out.append(e.model_copy(update={"served_score": score}))
        return out
