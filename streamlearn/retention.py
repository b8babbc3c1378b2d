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

from collections.abc import Mapping, Sequence
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
    parents: Mapping[int, int] | None = None,
) -> RetentionPlan:
    """The plan for ``versions`` (number, creation time), given the registry ``doc``: kept are
    the newest ``keep_last``, every pinned and aliased version and every rollback target, and
    the newest version of each hour (day) created within ``keep_within_hourly_s``
    (``keep_within_daily_s``) of ``now``. A kept delta snapshot keeps its chain (``parents``:
    the version each delta is a delta of), in both tiers, since it cannot be loaded without it;
    so an hour (a day) keeps its newest whole snapshot where it has one, which keeps no chain."""
    ordered = sorted(versions)
    numbers = [v for v, _ in ordered]
    kept = doc.spared() & set(numbers)
    kept |= set(numbers[-policy.keep_last :])
    parents = parents or {}
    for span, within in ((HOUR, policy.keep_within_hourly_s), (DAY, policy.keep_within_daily_s)):
        newest: dict[int, int] = {}
        whole: set[int] = set()  # buckets with a whole snapshot: a delta there is not kept
        for version, created in ordered:
            bucket = int(created // span)
            if now - created <= within and (version not in parents or bucket not in whole):
                newest[bucket] = version  # ordered: the last one wins
                if version not in parents:
                    whole.add(bucket)
        kept |= set(newest.values())
    hot = set(numbers[-policy.hot_last :]) | (set(doc.aliases.values()) & set(numbers))
    kept, hot = _chained(kept, parents), _chained(hot, parents)
    return RetentionPlan(
        kept=sorted(kept),
        delete=[v for v in numbers if v not in kept],
        hot=sorted(hot),
    )


def _chained(versions: set[int], parents: Mapping[int, int]) -> set[int]:
    """``versions`` and every version their deltas are built on."""
    closed = set(versions)
    for version in versions:
        while (version := parents.get(version, -1)) >= 0 and version not in closed:
            closed.add(version)
    return closed
