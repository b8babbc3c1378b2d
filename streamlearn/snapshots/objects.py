"""Object-storage snapshot store: the durable archive (a local directory, or S3 and friends).

Layout under the store's URL::

    <model>/v<version, 10 digits>.sls   the signed snapshot blob, written once (create-only)
    <model>/v<version, 10 digits>.meta  its signed metadata, the index listings read
    <model>/registry.json               the RegistryDocument: aliases, their history, pins

URLs are obstore's: ``file:///var/lib/streamlearn/snapshots`` (the default is a directory in the
user's cache), ``s3://bucket/prefix``, ``gs://...``, ``az://...``. Credentials and endpoints come
from the usual environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...) or
``options``.

A registry change is a compare and set: a conditional put on the document's ETag where the
store supports it (S3, GCS, Azure), and an exclusive lock on a file beside it in a local
directory (obstore cannot put conditionally there). Object storage pushes nothing, so
:meth:`ObjectSnapshotStore.notices` polls each model's newest version and registry revision
(every ``notices_poll_s``).
Every obstore error other than a missing object leaves this module as
:class:`~streamlearn.errors.StoreUnavailable`.

>>> import tempfile
>>> store = ObjectSnapshotStore(f"file://{tempfile.mkdtemp()}", b"key")
>>> v = store.next_version("ctr")
>>> store.put(Snapshot(model_name="ctr", version=v, model={"w": 1}, offsets={0: 5},
...     samples_seen=5, metrics={}, spec={}, parent_version=None, created_at=0.0))
>>> store.get("ctr").offsets, store.latest_version("ctr"), store.models()
({0: 5}, 1, ['ctr'])
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, final

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import from_url

from streamlearn.errors import SnapshotError, StoreUnavailable
from streamlearn.snapshots.base import RegistryChange, RegistryDocument, SignedBlobs, Snapshot

EVENTS_PREFIX = "events"  # where the event archive (streamlearn.archive) keeps its files


@contextmanager
def _unavailable(url: str) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, AlreadyExistsError, PreconditionError):
        raise  # a missing object, a lost race: the caller decides what that means
    # obstore's own errors, I/O errors, and its NotImplementedError for what a backend lacks.
    except (BaseError, OSError, NotImplementedError) as exc:
        raise StoreUnavailable(f"the archive {url} failed: {exc}") from exc


def _meta(path: str) -> str:
    return path.removesuffix(".sls") + ".meta"


@final
class ObjectSnapshotStore(SignedBlobs):
    def __init__(
        self, url: str, key: bytes, *, notices_poll_s: float | None = 1.0, **options: Any
    ) -> None:
        """``options`` are obstore's for the URL; ``notices_poll_s`` is how often
        :meth:`notices` looks for changes (None: never, and it only says it is listening)."""
        self.notices_poll_s = notices_poll_s
        self._local: Path | None = None
        if url.startswith("file://"):
            self._local = Path(url.removeprefix("file://"))
            self._local.mkdir(parents=True, exist_ok=True)
        self.url = url
        self._store = from_url(url, **options)
        self._key = key

    @staticmethod
    def _path(model_name: str, version: int) -> str:
        return f"{model_name}/v{version:010d}.sls"

    def version_numbers(self, model_name: str) -> list[int]:
        found = []
        with _unavailable(self.url):
            for batch in obstore.list(self._store, f"{model_name}/"):
                for obj in batch:
                    name = obj["path"].rsplit("/", 1)[-1]
                    if name.startswith("v") and name.endswith(".sls"):
                        found.append(int(name[1:-4]))
        return sorted(found)

    def models(self) -> list[str]:
        with _unavailable(self.url):
            listing = obstore.list_with_delimiter(self._store)
        # The event archive shares the store, under its own prefix: not a model.
        return sorted(
            p.rstrip("/") for p in listing["common_prefixes"] if p.rstrip("/") != EVENTS_PREFIX
        )

    def next_version(self, model_name: str) -> int:
        return (self.latest_version(model_name) or 0) + 1

    def put(self, snapshot: Snapshot) -> None:
        path = self._path(snapshot.model_name, snapshot.version)
        try:
            with _unavailable(self.url):
                # Create-only: a version, once written, never changes.
                obstore.put(self._store, path, snapshot.sign(self._key), mode="create")
        except AlreadyExistsError as exc:
            raise SnapshotError(f"{path} already exists: versions are immutable") from exc
        with _unavailable(self.url):
            obstore.put(self._store, _meta(path), snapshot.sign_meta(self._key))

    def _read(self, model_name: str, version: int) -> bytes | None:
        try:
            with _unavailable(self.url):
                return bytes(obstore.get(self._store, self._path(model_name, version)).bytes())
        except FileNotFoundError:
            return None

    def _index_entries(self, model_name: str, versions: list[int]) -> list[bytes | None]:
        entries: list[bytes | None] = []
        for version in versions:
            try:
                with _unavailable(self.url):
                    got = obstore.get(self._store, _meta(self._path(model_name, version)))
                    entries.append(bytes(got.bytes()))
            except FileNotFoundError:
                entries.append(None)
        return entries

    def delete(self, model_name: str, version: int) -> None:
        path = self._path(model_name, version)
        with _unavailable(self.url):
            obstore.delete(self._store, path)  # the blob first: it is what lists the version
            obstore.delete(self._store, _meta(path))

    def evict(self, model_name: str, versions: list[int]) -> None:
        """Nothing: the archive is the durable tier, it has no hot copies."""

    # ---- the registry -------------------------------------------------------------------------

    def _registry(self, model_name: str) -> tuple[RegistryDocument, str | None, bool]:
        """The document, its ETag, and whether it exists."""
        try:
            with _unavailable(self.url):
                got = obstore.get(self._store, f"{model_name}/registry.json")
                raw = bytes(got.bytes())
        except FileNotFoundError:
            return RegistryDocument(), None, False
        return RegistryDocument.model_validate_json(raw), got.meta["e_tag"], True

    def read_registry(self, model_name: str) -> RegistryDocument:
        return self._registry(model_name)[0]

    def update_registry(self, model_name: str, change: RegistryChange) -> RegistryDocument:
        path = f"{model_name}/registry.json"
        if self._local is not None:
            lock = self._local / model_name / ".registry.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            with lock.open("a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
                doc = self.read_registry(model_name)
                new = change(doc)
                if new != doc:
                    with _unavailable(self.url):
                        obstore.put(self._store, path, new.model_dump_json().encode())
                return new
        while True:
            doc, etag, exists = self._registry(model_name)
            new = change(doc)
            if new == doc:
                return doc
            mode: Any = {"e_tag": etag} if exists else "create"
            try:
                with _unavailable(self.url):
                    obstore.put(self._store, path, new.model_dump_json().encode(), mode=mode)
                return new
            except (AlreadyExistsError, PreconditionError):
                continue  # another writer was first: apply the change to what it wrote

    # ---- notices ------------------------------------------------------------------------------

    def _state(self) -> dict[str, tuple[int | None, int]]:
        return {m: (self.latest_version(m), self.read_registry(m).revision) for m in self.models()}

    def notices(self, wait_s: float = 1.0) -> Iterator[str | None]:
        poll_s = self.notices_poll_s
        seen = {} if poll_s is None else self._state()
        yield ""
        while True:
            time.sleep(wait_s if poll_s is None else poll_s)
            if poll_s is None:
                yield None
                continue
            now = self._state()
            changes: list[str | None] = []
            for model, (latest, revision) in now.items():
                before_latest, before_revision = seen.get(model, (None, 0))
                if latest is not None and latest != before_latest:
                    changes.append(f"{model}:{latest}")
                if revision != before_revision:
                    changes.append(f"{model}:registry")
            seen = now
            yield from changes or [None]
