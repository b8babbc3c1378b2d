"""Redis snapshot store: hot copies, a version index, and a notice on every new version.

Keys (under the configured prefix):

* ``snap:<model>:<version>``  the signed snapshot blob (immutable)
* ``versions:<model>``        sorted set of versions, scored by version
* ``latest:<model>``          the newest version number
* ``seq:<model>``             version counter
* ``registry:<model>``        aliases, their history and pins (JSON)
* channel ``versions``        publishes ``<model>:<version>`` after each put, and
                              ``<model>:registry`` after each registry change
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.snapshots.base import Snapshot, empty_registry


class RedisSnapshotStore:
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

    def models(self) -> list[str]:
        head = f"{self._p}versions:"
        return sorted(k.decode()[len(head) :] for k in self._r.scan_iter(match=f"{head}*"))

    def next_version(self, model_name: str) -> int:
        return int(self._r.incr(f"{self._p}seq:{model_name}"))

    def put(self, snapshot: Snapshot) -> None:
        name, version = snapshot.model_name, snapshot.version
        if not self._r.set(f"{self._p}snap:{name}:{version}", snapshot.sign(self._key), nx=True):
            raise SnapshotError(f"{name} version {version} already exists: versions are immutable")
        pipe = self._r.pipeline(transaction=True)
        pipe.zadd(f"{self._p}versions:{name}", {str(version): version})
        pipe.set(f"{self._p}latest:{name}", version)
        pipe.publish(self.channel, f"{name}:{version}")
        pipe.execute()

    def latest_version(self, model_name: str) -> int | None:
        raw = self._r.get(f"{self._p}latest:{model_name}")
        return int(raw) if raw is not None else None

    def _blob(self, model_name: str, version: int | None) -> bytes:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        blob = self._r.get(f"{self._p}snap:{model_name}:{version}")
        if blob is None:
            raise SnapshotNotFound(f"model {model_name!r} has no version {version}")
        return bytes(blob)

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        return Snapshot.verify(self._blob(model_name, version), self._key)

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        return Snapshot.verify_meta(self._blob(model_name, version), self._key)

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        raw = self._r.zrange(f"{self._p}versions:{model_name}", 0, -1)
        return [self.meta(model_name, int(v)) for v in raw]

    def delete(self, model_name: str, version: int) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(f"{self._p}snap:{model_name}:{version}")
        pipe.zrem(f"{self._p}versions:{model_name}", str(version))
        pipe.execute()
        newest = self._r.zrange(f"{self._p}versions:{model_name}", -1, -1)
        if newest:
            self._r.set(f"{self._p}latest:{model_name}", int(newest[0]))
        else:
            self._r.delete(f"{self._p}latest:{model_name}")

    def read_registry(self, model_name: str) -> dict[str, Any]:
        raw = self._r.get(f"{self._p}registry:{model_name}")
        if raw is None:
            return empty_registry()
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    def write_registry(self, model_name: str, doc: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(f"{self._p}registry:{model_name}", orjson.dumps(doc))
        pipe.publish(self.channel, f"{model_name}:registry")
        pipe.execute()
