"""Turn an impression (context and item features as served) into the flat dict a model learns on.

Training and serving call the same function, so what was served is what is learned; the one-hot
encoding of those dicts (what River's pipeline would make of them, faster) is here too, for
learning one example and for scoring a request's candidates at once.

Numbers stay numbers, booleans become 0 or 1, strings stay strings (the model spec's pipeline
one-hot encodes or hashes them), and configured crosses join two categorical features so that a
linear model can learn who likes what:

>>> x = impression_features({"segment": "bargain"}, {"category": "toys", "price": 9.5},
...                         item_id="i7", crosses=[("segment", "category")])
>>> for name, value in x.items():
...     print(name, repr(value))
c:segment 'bargain'
i:category 'toys'
i:price 9.5
item 'i7'
x:segment&category 'bargain&toys'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamlearn.events import ExampleRecord, LabeledExample
    from streamlearn.learning import ModelSpec

FeatureValue = float | bool | str


Features = dict[str, float | str]


def impression_features(
    context: Mapping[str, FeatureValue],
    item: Mapping[str, FeatureValue],
    *,
    item_id: str,
    crosses: Iterable[tuple[str, str]] = (),
    include_ids: bool = True,
    position: int | None = None,
) -> Features:
    # Comprehensions rather than a helper per feature: this runs once per example learned.
    out: Features = {
        f"c:{name}": value if isinstance(value, str) else float(value)
        for name, value in context.items()
    }
    out.update(
        {
            f"i:{name}": value if isinstance(value, str) else float(value)
            for name, value in item.items()
        }
    )
    if include_ids:
        out["item"] = item_id
    for a, b in crosses:
        feature = cross(context, item, a, b)
        if feature is not None:
            out[feature[0]] = feature[1]
    if position is not None:  # a model spec's position "feature": one bias per slot
        out["pos"] = str(position)
    return out


def cross(
    context: Mapping[str, FeatureValue], item: Mapping[str, FeatureValue], a: str, b: str
) -> tuple[str, float | str] | None:
    """The cross of features ``a`` and ``b`` (the item's value wins over the context's), or None
    when either is missing: two strings, or a string and a number, join as a category
    ``x:a&b = "va&vb"``; two numbers multiply, ``x:a*b``."""
    va = item[a] if a in item else context.get(a)
    vb = item[b] if b in item else context.get(b)
    if va is None or vb is None:
        return None
    if isinstance(va, str) or isinstance(vb, str):
        return f"x:{a}&{b}", f"{va}&{vb}"
    return f"x:{a}*{b}", float(va) * float(vb)


def example_features(spec: ModelSpec, example: LabeledExample | ExampleRecord) -> Features:
    """What a model learns an example on: the impression as served, and under the spec's
    position ``feature`` the slot it was shown in."""
    return impression_features(
        example.context,
        example.item_features,
        item_id=example.item_id,
        crosses=spec.crosses,
        include_ids=spec.include_ids,
        position=example.position if spec.position == "feature" else None,
    )


def one_hot_union(x: dict[str, Any]) -> dict[str, Any]:
    """What ``ModelSpec.build()[0]`` (one-hot, no scaling) makes of ``x``, in one pass instead
    of River's union of two sub-pipelines: the numbers, then ``name_value: 1`` for each string,
    in the same order, so the learner sums its dot products in the same order too.

    >>> one_hot_union({"c:segment": "bargain", "i:price": 9.5, "item": "i7"})
    {'i:price': 9.5, 'c:segment_bargain': 1, 'item_i7': 1}
    """
    out = {name: value for name, value in x.items() if not isinstance(value, str)}
    for name, value in x.items():
        if isinstance(value, str):
            out[f"{name}_{value}"] = 1
    return out


Parts = tuple[dict[str, float], dict[str, int]]
"""A part of an impression's one-hot encoding: its numbers, and its one-hots (``name_value: 1``)."""
ItemParts = dict[tuple[str, tuple[tuple[str, FeatureValue], ...]], Parts]
"""A cache of :func:`item_parts`, by item id and features."""

MAX_CACHED_ITEMS = 100_000


def context_parts(context: Mapping[str, FeatureValue]) -> Parts:
    """The context's part of every candidate's one-hot encoding."""
    return (
        {f"c:{k}": float(v) for k, v in context.items() if not isinstance(v, str)},
        {f"c:{k}_{v}": 1 for k, v in context.items() if isinstance(v, str)},
    )


def item_parts(
    item_id: str, item: Mapping[str, FeatureValue], include_ids: bool, items: ItemParts | None
) -> Parts:
    """An item's own part of its one-hot encoding (its id among the one-hots), kept in ``items``
    by item id and features: a catalog's items, ranked again and again, are encoded once. The
    part depends on nothing else (not the context, not the weights), so a kept one is always
    right; past :data:`MAX_CACHED_ITEMS` the cache starts again."""
    key = (item_id, tuple(item.items()))
    parts = items.get(key) if items is not None else None
    if parts is None:
        parts = (
            {f"i:{k}": float(v) for k, v in item.items() if not isinstance(v, str)},
            {f"i:{k}_{v}": 1 for k, v in item.items() if isinstance(v, str)},
        )
        if include_ids:
            parts[1][f"item_{item_id}"] = 1
        if items is not None:
            if len(items) >= MAX_CACHED_ITEMS:
                items.clear()
            items[key] = parts
    return parts


def crossed_parts(
    context: Mapping[str, FeatureValue],
    item: Mapping[str, FeatureValue],
    crosses: tuple[tuple[str, str], ...],
) -> tuple[dict[str, float], list[str]]:
    """The crosses' part: the numeric crosses, and the names of the one-hot ones."""
    numbers: dict[str, float] = {}
    hots: list[str] = []
    for a, b in crosses:
        feature = cross(context, item, a, b)
        if feature is None:
            continue
        name, value = feature
        if isinstance(value, str):
            hots.append(f"{name}_{value}")
        else:
            numbers[name] = value
    return numbers, hots


def one_hot_candidates(
    context: Mapping[str, FeatureValue],
    candidates: Iterable[tuple[str, Mapping[str, FeatureValue]]],
    crosses: Iterable[tuple[str, str]],
    include_ids: bool,
    position: int | None = None,
    items: ItemParts | None = None,
) -> Iterator[dict[str, Any]]:
    """``one_hot_union(impression_features(context, item, ...))`` for each candidate of one
    request, with the context encoded once rather than once per candidate, and each item's own
    part kept in ``items`` when given (:func:`item_parts`): the same keys, values and order
    (numbers, then one-hots, each in feature order), so the same scores to the bit."""
    crosses = tuple(crosses)
    numbers, hots = context_parts(context)
    for item_id, item in candidates:
        own = item_parts(item_id, item, include_ids, items)
        crossed, crossed_hots = crossed_parts(context, item, crosses)
        out: dict[str, Any] = {**numbers, **own[0], **crossed, **hots, **own[1]}
        for name in crossed_hots:
            out[name] = 1
        if position is not None:
            out[f"pos_{position}"] = 1
        yield out
