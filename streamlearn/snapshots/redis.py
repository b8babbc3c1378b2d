"""Redis snapshot store: hot copies, a version index, and a notice on every new version.

Keys (under the configured prefix):

* ``snap:<model>:<version>``  the signed snapshot blob (immutable)
* ``versions:<model>``        sorted set of versions, scored by version (its top is the latest)
* ``seq:<model>``             version counter
* ``registry:<model>``        aliases, their history and pins (JSON)
* channel ``versions``        publishes ``<model>:<version>`` after each put, and
                              ``<model>:registry`` after each registry change
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import redis

from streamlearn.errors import SnapshotError
from streamlearn.snapshots.base import SignedBlobs, Snapshot, empty_registry


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
        """The channel's notices as they come, and None after each ``wait_s`` of silence (so a
        follower can check whether to stop); raises RedisError when the connection fails. The
        first item is ``""``, once subscribed: what changed before that has no notice coming,
        so a follower looks for itself then."""
        pubsub = self._r.pubsub()
        try:
            pubsub.subscribe(self.channel)
            # Subscribed once Redis confirms it, not when the command is sent.
            while (msg := pubsub.get_message(timeout=wait_s)) is None or msg["type"] != "subscribe":
                pass
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
        return sorted(k.decode()[len(head) :] for k in self._r.scan_iter(match=f"{head}*"))

    def next_version(self, model_name: str) -> int:
        return int(self._r.incr(f"{self._p}seq:{model_name}"))

    def put(self, snapshot: Snapshot) -> None:
        name, version = snapshot.model_name, snapshot.version
        if not self._r.set(f"{self._p}snap:{name}:{version}", snapshot.sign(self._key), nx=True):
            raise SnapshotError(f"{name} version {version} already exists: versions are immutable")
        pipe = self._r.pipeline(transaction=True)
        pipe.zadd(f"{self._p}versions:{name}", {str(version): version})
        pipe.publish(self.channel, f"{name}:{version}")
        pipe.execute()

    def latest_version(self, model_name: str) -> int | None:
        newest = self._r.zrange(f"{self._p}versions:{model_name}", -1, -1)
        return int(newest[0]) if newest else None

    def version_numbers(self, model_name: str) -> list[int]:
        return [int(v) for v in self._r.zrange(f"{self._p}versions:{model_name}", 0, -1)]

    def _read(self, model_name: str, version: int) -> bytes | None:
        blob = self._r.get(f"{self._p}snap:{model_name}:{version}")
        return None if blob is None else bytes(blob)

    def delete(self, model_name: str, version: int) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(f"{self._p}snap:{model_name}:{version}")
        pipe.zrem(f"{self._p}versions:{model_name}", str(version))
        pipe.execute()

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
