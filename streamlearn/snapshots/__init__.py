"""Versioned, signed model snapshots and the stores that keep them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamlearn.snapshots.base import Snapshot, SnapshotStore
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.snapshots.redis import RedisSnapshotStore
from streamlearn.snapshots.tiered import TieredSnapshotStore

if TYPE_CHECKING:
    from streamlearn.settings import Settings


def open_store(settings: Settings) -> TieredSnapshotStore:
    """The configured store: Redis for hot copies and notices, the archive for durability. Both
    are namespaced by the topic prefix, as everything else is."""
    key = settings.snapshot_hmac_key.get_secret_value().encode()
    prefix = settings.topic_prefix
    hot = RedisSnapshotStore.from_url(settings.redis_url, key, prefix)
    store = ObjectSnapshotStore(settings.store_url, key, **settings.archive_options)
    return TieredSnapshotStore(hot, store)


__all__ = [
    "ObjectSnapshotStore",
    "RedisSnapshotStore",
    "Snapshot",
    "SnapshotStore",
    "TieredSnapshotStore",
    "open_store",
]
