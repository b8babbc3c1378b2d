"""Versioned, signed model snapshots and the stores that keep them."""

from streamlearn.snapshots.base import Snapshot, SnapshotStore
from streamlearn.snapshots.redis import RedisSnapshotStore

__all__ = ["RedisSnapshotStore", "Snapshot", "SnapshotStore"]
