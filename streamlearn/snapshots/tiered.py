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
from streamlearn.snapshots.base import (
    RegistryChange,
    RegistryDocument,
    Snapshot,
    SnapshotStore,
    page_of,
)
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

    def get(
        self, model_name: str, version: int | None = None, loaded: tuple[int, Any] | None = None
    ) -> Snapshot:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        return Snapshot.verify(
            self._blob(model_name, version),
            self.hot.key,
            lambda parent: self._blob(model_name, parent),
            loaded,
        )

    def _blob(self, model_name: str, version: int) -> bytes:
        """Each link of a chain from Redis, else from the archive."""
        try:
            return self.hot.blob(model_name, version)
        except (StoreUnavailable, SnapshotNotFound):
            return self.archive.blob(model_name, version)

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        return self.versions_of(model_name, [version])[0]

    def versions(
        self, model_name: str, limit: int | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        """The archive lists the versions (it has them all); Redis's index has their metadata,
        one read for the page, and the archive the rest (Redis down, or refilled after it lost
        its data)."""
        return self.versions_of(
            model_name, page_of(self.archive.version_numbers(model_name), limit, before)
        )

    def versions_of(self, model_name: str, numbers: list[int]) -> list[dict[str, Any]]:
        try:
            found = self.hot.indexed(model_name, numbers)
        except StoreUnavailable:
            found = {}
        return [found[v] if v in found else self.archive.meta(model_name, v) for v in numbers]

    def version_times(self, model_name: str) -> list[tuple[int, float]]:
        try:
            indexed = dict(self.hot.version_times(model_name))
        except StoreUnavailable:
            indexed = {}
        numbers = self.archive.version_numbers(model_name)
        missing = [v for v in numbers if v not in indexed]
        indexed |= {m["version"]: m["created_at"] for m in self.versions_of(model_name, missing)}
        return [(v, indexed[v]) for v in numbers]

    def delete(self, model_name: str, version: int) -> None:
        self.hot.delete(model_name, version)
        self.archive.delete(model_name, version)

    def evict(self, model_name: str, versions: list[int]) -> None:
        self.hot.drop_copies(model_name, versions)

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
