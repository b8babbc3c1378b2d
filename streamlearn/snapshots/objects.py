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

from streamlearn.errors import SnapshotError
from streamlearn.snapshots.base import SignedBlobs, Snapshot, empty_registry


class ObjectSnapshotStore(SignedBlobs):
    def __init__(self, url: str, key: bytes, **options: Any) -> None:
        if url.startswith("file://"):
            Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        self.url = url
        self._store = from_url(url, **options)
        self._key = key

    @staticmethod
    def _path(model_name: str, version: int) -> str:
        return f"{model_name}/v{version:010d}.sls"

    def version_numbers(self, model_name: str) -> list[int]:
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

    def _read(self, model_name: str, version: int) -> bytes | None:
        try:
            return bytes(obstore.get(self._store, self._path(model_name, version)).bytes())
        except FileNotFoundError:
            return None

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
