"""Object-storage snapshot store: the durable archive (a local directory, or S3 and friends).

Layout under the store's URL::

    <model>/v<version, 10 digits>.sls   the signed snapshot blob, written once (create-only)
    <model>/registry.json               aliases, their history, pins

URLs are obstore's: ``file:///var/lib/streamlearn/snapshots`` (the default is a directory in the
user's cache), ``s3://bucket/prefix``, ``gs://...``, ``az://...``. Credentials and endpoints come
from the usual environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...) or
``options``.

>>> import tempfile
>>> store = ObjectSnapshotStore(f"file://{tempfile.mkdtemp()}", b"key")
>>> v = store.next_version("ctr")
>>> store.put(Snapshot(model_name="ctr", version=v, model={"w": 1}, offsets={0: 5},
...     samples_seen=5, metrics={}, spec={}, parent_version=None, created_at=0.0))
>>> store.get("ctr").offsets, store.latest_version("ctr"), store.models()
({0: 5}, 1, ['ctr'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import obstore
import orjson
from obstore.exceptions import AlreadyExistsError
from obstore.store import from_url

from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.snapshots.base import Snapshot, empty_registry


class ObjectSnapshotStore:
    def __init__(self, url: str, key: bytes, **options: Any) -> None:
        if url.startswith("file://"):
            Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        self.url = url
        self._store = from_url(url, **options)
        self._key = key

    @staticmethod
    def _path(model_name: str, version: int) -> str:
        return f"{model_name}/v{version:010d}.sls"

    def _version_numbers(self, model_name: str) -> list[int]:
        found = []
        for batch in obstore.list(self._store, f"{model_name}/"):
            for obj in batch:
                name = obj["path"].rsplit("/", 1)[-1]
                if name.startswith("v") and name.endswith(".sls"):
                    found.append(int(name[1:-4]))
        return sorted(found)

    def models(self) -> list[str]:
        listing = obstore.list_with_delimiter(self._store)
        return sorted(p.rstrip("/") for p in listing["common_prefixes"])

    def next_version(self, model_name: str) -> int:
        return (self.latest_version(model_name) or 0) + 1

    def put(self, snapshot: Snapshot) -> None:
        path = self._path(snapshot.model_name, snapshot.version)
        try:
            # Create-only: a version, once written, never changes.
            obstore.put(self._store, path, snapshot.sign(self._key), mode="create")
        except AlreadyExistsError as exc:
            raise SnapshotError(f"{path} already exists: versions are immutable") from exc

    def latest_version(self, model_name: str) -> int | None:
        numbers = self._version_numbers(model_name)
        return numbers[-1] if numbers else None

    def _blob(self, model_name: str, version: int | None) -> bytes:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        try:
            return bytes(obstore.get(self._store, self._path(model_name, version)).bytes())
        except FileNotFoundError as exc:
            raise SnapshotNotFound(f"model {model_name!r} has no version {version}") from exc

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        return Snapshot.verify(self._blob(model_name, version), self._key)

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        return Snapshot.verify_meta(self._blob(model_name, version), self._key)

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        return [self.meta(model_name, v) for v in self._version_numbers(model_name)]

    def delete(self, model_name: str, version: int) -> None:
        obstore.delete(self._store, self._path(model_name, version))

    def read_registry(self, model_name: str) -> dict[str, Any]:
        try:
            raw = obstore.get(self._store, f"{model_name}/registry.json").bytes()
        except FileNotFoundError:
            return empty_registry()
        doc: dict[str, Any] = orjson.loads(bytes(raw))
        return doc

    def write_registry(self, model_name: str, doc: dict[str, Any]) -> None:
        obstore.put(self._store, f"{model_name}/registry.json", orjson.dumps(doc))
