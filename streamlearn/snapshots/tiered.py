"""Redis for hot copies and notices, object storage as the durable archive, as one store.

A version is written to the archive first and to Redis second, and counts as written only when
both have it: that is the point after which the trainer commits its offsets. Reads prefer Redis
and fall back to the archive, so the API keeps loading versions while Redis is down, and a
Redis that lost its data is refilled on the next write. Version numbers follow the archive, the
one that never forgets.

The registry document is changed in Redis (compare and set, so concurrent writers lose
nothing), starting from the archive's copy when that one is newer (Redis lost its data), and
the archive's copy then follows: it is replaced only by a newer revision, so two writers
finishing out of order cannot leave an older document there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, final

from streamlearn.errors import SnapshotNotFound, StoreUnavailable
from streamlearn.snapshots.base import RegistryChange, RegistryDocument, Snapshot, SnapshotStore
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.snapshots.redis import RedisSnapshotStore


@final
class TieredSnapshotStore(SnapshotStore):
    def __init__(self, hot: RedisSnapshotStore, archive: ObjectSnapshotStore) -> None:
        self.hot = hot
        self.archive = archive

    def models(self) -> list[str]:
        return self.archive.models()

    def next_version(self, model_name: str) -> int:
        return self.archive.next_version(model_name)

    def put(self, snapshot: Snapshot) -> None:
        self.archive.put(snapshot)
        self.hot.put(snapshot)

    def latest_version(self, model_name: str) -> int | None:
        """Redis's latest (one call: the API asks every poll); the archive's when Redis is down
        or has lost its data. A version only in the archive (its Redis write failed) is not the
        latest yet: it has not counted as written."""
        try:
            latest = self.hot.latest_version(model_name)
        except StoreUnavailable:
            latest = None
        return latest if latest is not None else self.archive.latest_version(model_name)

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        try:
            return self.hot.get(model_name, version)
        except (StoreUnavailable, SnapshotNotFound):
            return self.archive.get(model_name, version)

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        return self.archive.meta(model_name, version)

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        return self.archive.versions(model_name)

    def delete(self, model_name: str, version: int) -> None:
        self.hot.delete(model_name, version)
        self.archive.delete(model_name, version)

    def read_registry(self, model_name: str) -> RegistryDocument:
        try:
            return self.hot.read_registry(model_name)
        except StoreUnavailable:
            return self.archive.read_registry(model_name)

    def update_registry(self, model_name: str, change: RegistryChange) -> RegistryDocument:
        archived = self.archive.read_registry(model_name)

        def from_newest(hot: RegistryDocument) -> RegistryDocument:
            return change(archived if archived.revision > hot.revision else hot)

        # Redis first: with Redis down a promote fails whole, rather than half done.
        new = self.hot.update_registry(model_name, from_newest)
        self.archive.update_registry(
            model_name, lambda old: new if new.revision > old.revision else old
        )
        return new

    def notices(self, wait_s: float = 1.0) -> Iterator[str | None]:
        return self.hot.notices(wait_s)
