"""Turn an impression (context and item features as served) into the flat dict a model learns on.

Training and serving call the same function, so what was served is what is learned.

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

from collections.abc import Iterable, Mapping

FeatureValue = float | bool | str


Features = dict[str, float | str]


def impression_features(
    context: Mapping[str, FeatureValue],
    item: Mapping[str, FeatureValue],
    *,
    item_id: str,
    crosses: Iterable[tuple[str, str]] = (),
    include_ids: bool = True,
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
