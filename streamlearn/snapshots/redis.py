"""Redis snapshot store: hot copies, a version index, and a notice on every change.

Keys (under the configured prefix):

* ``snap:<model>:<version>``  the signed snapshot blob (immutable)
* ``versions:<model>``        sorted set of versions, scored by version (its top is the latest)
* ``meta:<model>``            hash of version -> its signed metadata: the index listings read
* ``created:<model>``         sorted set of versions, scored by creation time: what retention
                              reads
* ``seq:<model>``             version counter
* ``registry:<model>``        the :class:`~streamlearn.snapshots.base.RegistryDocument` (JSON),
                              changed only inside a WATCH/MULTI transaction (compare and set)
* channel ``versions``        publishes ``<model>:<version>`` after each put, and
                              ``<model>:registry`` after each registry change

Every ``RedisError`` leaves this module as :class:`~streamlearn.errors.StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast, final

import redis
from redis.exceptions import RedisError, WatchError

from streamlearn.errors import SnapshotError, StoreUnavailable
from streamlearn.snapshots.base import RegistryChange, RegistryDocument, SignedBlobs, Snapshot


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"Redis did not answer: {exc}") from exc


def _document(raw: bytes | None) -> RegistryDocument:
    return RegistryDocument() if raw is None else RegistryDocument.model_validate_json(raw)


@final
class RedisSnapshotStore(SignedBlobs):
    def __init__(
        self, client: redis.Redis[bytes], key: bytes, prefix: str = "streamlearn."
    ) -> None:
        self._r = client
        self._key = key
        self._p = prefix

    @classmethod
    def from_url(cls, url: str, key: bytes, prefix: str = "streamlearn.") -> RedisSnapshotStore:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, key, prefix)

    @property
    def channel(self) -> str:
        return f"{self._p}versions"

    def notices(self, wait_s: float = 1.0) -> Iterator[str | None]:
        with _unavailable():
            pubsub = self._r.pubsub()
            try:
                pubsub.subscribe(self.channel)
                # Subscribed once Redis confirms it, not when the command is sent.
                confirmed = False
                while not confirmed:
                    msg = pubsub.get_message(timeout=wait_s)
                    confirmed = msg is not None and msg["type"] == "subscribe"
                yield ""
                while True:
                    msg = pubsub.get_message(timeout=wait_s)
                    if msg is None:
                        yield None
                    elif msg["type"] == "message":
                        yield bytes(msg["data"]).decode()
            finally:
                pubsub.close()

    def models(self) -> list[str]:
        head = f"{self._p}versions:"
        with _unavailable():
            return sorted(k.decode()[len(head) :] for k in self._r.scan_iter(match=f"{head}*"))

    def next_version(self, model_name: str) -> int:
        with _unavailable():
            return int(self._r.incr(f"{self._p}seq:{model_name}"))

    def put(self, snapshot: Snapshot) -> None:
        name, version = snapshot.model_name, snapshot.version
        with _unavailable():
            blob = snapshot.sign(self._key)
            if not self._r.set(f"{self._p}snap:{name}:{version}", blob, nx=True):
                raise SnapshotError(
                    f"{name} version {version} already exists: versions are immutable"
                )
            pipe = self._r.pipeline(transaction=True)
            pipe.zadd(f"{self._p}versions:{name}", {str(version): version})
            pipe.hset(f"{self._p}meta:{name}", str(version), snapshot.sign_meta(self._key))
            pipe.zadd(f"{self._p}created:{name}", {str(version): snapshot.created_at})
            pipe.publish(self.channel, f"{name}:{version}")
            pipe.execute()

    def latest_version(self, model_name: str) -> int | None:
        with _unavailable():
            newest = self._r.zrange(f"{self._p}versions:{model_name}", -1, -1)
        return int(newest[0]) if newest else None

    def version_numbers(self, model_name: str) -> list[int]:
        with _unavailable():
            return [int(v) for v in self._r.zrange(f"{self._p}versions:{model_name}", 0, -1)]

    def _read(self, model_name: str, version: int) -> bytes | None:
        with _unavailable():
            blob = self._r.get(f"{self._p}snap:{model_name}:{version}")
        return None if blob is None else bytes(blob)

    def _index_entries(self, model_name: str, versions: list[int]) -> list[bytes | None]:
        if not versions:
            return []
        with _unavailable():
            return list(self._r.hmget(f"{self._p}meta:{model_name}", [str(v) for v in versions]))

    def version_times(self, model_name: str) -> list[tuple[int, float]]:
        with _unavailable():
            scored = self._r.zrange(f"{self._p}created:{model_name}", 0, -1, withscores=True)
        return sorted((int(v), float(t)) for v, t in scored)

    def delete(self, model_name: str, version: int) -> None:
        with _unavailable():
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(f"{self._p}snap:{model_name}:{version}")
            pipe.zrem(f"{self._p}versions:{model_name}", str(version))
            pipe.hdel(f"{self._p}meta:{model_name}", str(version))
            pipe.zrem(f"{self._p}created:{model_name}", str(version))
            pipe.execute()

    def evict(self, model_name: str, versions: list[int]) -> None:
        """Nothing: alone, Redis holds the only copy. As the tiered store's hot tier, it
        drops copies with :meth:`drop_copies`."""

    def drop_copies(self, model_name: str, versions: list[int]) -> None:
        """Only the blobs go; the index keeps the versions (the archive holds their copies)."""
        if versions:
            with _unavailable():
                self._r.delete(*(f"{self._p}snap:{model_name}:{v}" for v in versions))

    def read_registry(self, model_name: str) -> RegistryDocument:
        with _unavailable():
            raw = self._r.get(f"{self._p}registry:{model_name}")
        return _document(raw)

    def update_registry(self, model_name: str, change: RegistryChange) -> RegistryDocument:
        key = f"{self._p}registry:{model_name}"
        with _unavailable(), self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # EXEC fails if another writer changes it from here on
                    raw = cast("bytes | None", pipe.get(key))  # immediate while watching
                    doc = _document(raw)
                    new = change(doc)
                    if new == doc:
                        pipe.unwatch()
                        return doc
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    pipe.publish(self.channel, f"{model_name}:registry")
                    pipe.execute()
                    return new
                except WatchError:
                    continue  # another writer was first: apply the change to what it wrote
