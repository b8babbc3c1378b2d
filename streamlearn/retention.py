"""Which model versions to keep: the newest few, every version the registry names, and a
thinned history, the way backup tools thin theirs (restic's ``--keep-last``,
``--keep-within-hourly``, ``--keep-within-daily``).

The trainer applies a model's policy after each of its checkpoints, so storage stays bounded
without anyone running a command: at a checkpoint every 10 s that is about 20 + 168 + 90 versions
in the archive, for ever, instead of 8,640 more every day. Redis keeps only the hot set: the
newest ``hot_last`` versions and the aliased ones, what the API loads; every other kept version
is read from the archive when asked for.

>>> DAY = 86400.0
>>> versions = [(v, v * 3600.0) for v in range(1, 24 * 10 + 1)]  # one an hour for ten days
>>> doc = RegistryDocument().promoted("champion", 3).pinned(5)
>>> policy = RetentionPolicy(keep_last=2, keep_within_hourly_s=DAY, keep_within_daily_s=7 * DAY,
...                         hot_last=1)
>>> plan = plan_retention(versions, doc, policy, now=240 * 3600.0)
>>> sorted(set(range(1, 241)) - set(plan.delete))[:4], len(plan.kept)  # 3, 5; days; hours
([3, 5, 95, 119], 33)
>>> plan.hot
[3, 240]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from streamlearn.policy import Policy
from streamlearn.snapshots.base import RegistryDocument

HOUR, DAY = 3600.0, 86400.0


class RetentionPolicy(Policy):
    """What the trainer keeps of a model's versions after each checkpoint."""

    FLAT: ClassVar[dict[str, str]] = {
        "automatic": "retention_automatic",
        "keep_last": "retention_keep_last",
        "keep_within_hourly_s": "retention_keep_within_hourly_s",
        "keep_within_daily_s": "retention_keep_within_daily_s",
        "hot_last": "retention_hot_last",
    }

    automatic: bool = Field(
        True, description="Apply after every checkpoint; off: only `streamlearn registry retain`."
    )
    keep_last: int = Field(20, ge=1, description="The newest versions, always kept.")
    keep_within_hourly_s: float = Field(
        7 * DAY, ge=0, description="For this long back, the newest version of every hour."
    )
    keep_within_daily_s: float = Field(
        90 * DAY, ge=0, description="For this long back, the newest version of every day (UTC)."
    )
    hot_last: int = Field(
        3, ge=1, description="The newest versions whose copies Redis keeps, besides aliased ones."
    )


@dataclass(frozen=True)
class RetentionPlan:
    kept: list[int]  # oldest first
    delete: list[int]  # from every tier
    hot: list[int]  # kept whole in Redis; the other kept versions only in the archive


def plan_retention(
    versions: Sequence[tuple[int, float]],
    doc: RegistryDocument,
    policy: RetentionPolicy,
    now: float,
) -> RetentionPlan:
    """The plan for ``versions`` (number, creation time), given the registry ``doc``: kept are
    the newest ``keep_last``, every pinned and aliased version and every rollback target, and
    the newest version of each hour (day) created within ``keep_within_hourly_s``
    (``keep_within_daily_s``) of ``now``."""
    ordered = sorted(versions)
    numbers = [v for v, _ in ordered]
    kept = doc.spared() & set(numbers)
    kept |= set(numbers[-policy.keep_last :])
    for span, within in ((HOUR, policy.keep_within_hourly_s), (DAY, policy.keep_within_daily_s)):
        newest: dict[int, int] = {}
        for version, created in ordered:
            if now - created <= within:
                newest[int(created // span)] = version  # ordered: the last one wins
        kept |= set(newest.values())
    hot = set(numbers[-policy.hot_last :]) | (set(doc.aliases.values()) & set(numbers))
    return RetentionPlan(
        kept=sorted(kept),
        delete=[v for v in numbers if v not in kept],
        hot=sorted(hot),
    )
