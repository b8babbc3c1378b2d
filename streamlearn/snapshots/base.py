"""A model snapshot, its signed wire form, the registry document, and the store interface every
backend implements.

Wire form, one atomic object: a blob signed for the purpose ``snapshot``
(:mod:`streamlearn.signing`), whose body is::

    len(meta) (4 bytes, big endian) | meta (JSON) | pickled model

The signature is verified before the metadata is trusted or the model is unpickled, so a snapshot
altered in the store (or signed with another key, or for another purpose) is refused and never
loaded. Snapshots written before that framing (``b"SLS1" | HMAC | body``) are still read.

Offsets are *next* offsets: ``offsets[p] = n`` means the model has learned every record of
partition ``p`` below offset ``n`` and none at or above it. A restarted trainer seeks to exactly
these offsets.

>>> snap = Snapshot(model_name="m", version=3, model={"w": 1.0}, offsets={0: 10},
...                 samples_seen=10, metrics={}, spec={}, parent_version=2, created_at=1.0)
>>> blob = snap.sign(b"k")
>>> Snapshot.verify(blob, b"k").offsets
{0: 10}
>>> Snapshot.verify(blob, b"other")
Traceback (most recent call last):
...
streamlearn.errors.SignatureError: snapshot signature does not verify: refusing to load it
"""

from __future__ import annotations

import pickle
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamlearn import __version__, signing
from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.snapshots import delta

SCHEMA_VERSION = 1
_BLOB_ONLY = frozenset({"model", "order", "payload"})


@dataclass
class Snapshot:
    model_name: str
    version: int
    model: Any
    offsets: dict[int, int]
    samples_seen: int
    metrics: dict[str, float]
    spec: dict[str, Any]
    parent_version: int | None
    created_at: float
    schema_version: int = SCHEMA_VERSION
    code_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    order: list[tuple[int, int]] = field(default_factory=list)
    """How the examples since the parent were learned: runs of (partition, the offset that
    partition was learned up to, exclusive), in order. Kafka orders records within a partition
    only; this is what a replay needs to learn them as the trainer did. Kept in the snapshot's
    blob, not in listings."""
    delta_of: int | None = None
    """The version this one's payload is a delta of (:mod:`streamlearn.snapshots.delta`); None:
    the payload is the whole model."""
    payload: bytes | None = field(default=None, repr=False, compare=False)
    """The model as written (a pickle, or a delta of ``delta_of``): the trainer's encoder sets
    it, else it is the model pickled, once, however many stores the snapshot goes to."""

    def meta(self) -> dict[str, Any]:
        """Everything but the model and its learning order: what listings show."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BLOB_ONLY}
        meta["offsets"] = {str(p): o for p, o in self.offsets.items()}
        return meta

    def sign(self, key: bytes) -> bytes:
        if self.payload is None:
            self.payload = pickle.dumps(self.model, protocol=5)
            # Whole, whatever the snapshot was loaded from (a copy of a delta put again).
            self.delta_of = None
        meta = orjson.dumps({**self.meta(), "order": self.order})
        body = struct.pack(">I", len(meta)) + meta + self.payload
        return signing.sign(body, key, signing.SNAPSHOT)

    @staticmethod
    def _body(blob: bytes, key: bytes) -> bytes:
        return signing.verify(blob, key, signing.SNAPSHOT)

    @staticmethod
    def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
        (n,) = struct.unpack(">I", body[:4])
        meta: dict[str, Any] = orjson.loads(body[4 : 4 + n])
        return meta, body[4 + n :]

    @classmethod
    def verify_meta(cls, blob: bytes, key: bytes) -> dict[str, Any]:
        """The verified metadata, without unpickling the model."""
        meta = cls._split(cls._body(blob, key))[0]
        meta.pop("order", None)
        return meta

    def sign_meta(self, key: bytes) -> bytes:
        """The metadata alone, signed: the index entry that listings read instead of blobs."""
        return signing.sign(orjson.dumps(self.meta()), key, signing.SNAPSHOT_META)

    @staticmethod
    def verify_index_entry(entry: bytes, key: bytes) -> dict[str, Any]:
        meta: dict[str, Any] = orjson.loads(signing.verify(entry, key, signing.SNAPSHOT_META))
        return meta

    @classmethod
    def verify(
        cls,
        blob: bytes,
        key: bytes,
        parent: Callable[[int], bytes] | None = None,
        loaded: tuple[int, Any] | None = None,
    ) -> Snapshot:
        """The snapshot in ``blob``; a delta's chain is followed through ``parent`` (a
        version's blob) down to a full snapshot, or to ``loaded`` (a version already loaded,
        and its model, which stays as it is), whichever comes first."""
        meta, payload = cls._split(cls._body(blob, key))
        # JSON object keys are strings: partitions come back as ints.
        offsets = {int(p): o for p, o in meta.pop("offsets").items()}
        order = [(int(p), int(o)) for p, o in meta.pop("order", [])]
        deltas: list[bytes] = []
        name, version, link = meta["model_name"], meta["version"], meta.get("delta_of")
        while link is not None:
            # Versions only go down a chain, so it ends; and each link must be the blob of the
            # version named: a signature says who wrote a blob, not where it belongs.
            if not isinstance(link, int) or link >= version:
                raise SnapshotError(f"{name} v{version} is a delta of v{link}, not an earlier one")
            deltas.append(payload)
            if loaded is not None and loaded[0] == link:
                return cls(
                    model=delta.apply(loaded[1], deltas[::-1]), offsets=offsets, order=order, **meta
                )
            if parent is None:
                raise SnapshotError(f"version {meta['version']} is a delta of v{link}: it needs it")
            link_meta, payload = cls._split(cls._body(parent(link), key))
            if (link_meta.get("model_name"), link_meta.get("version")) != (name, link):
                raise SnapshotError(
                    f"{name} v{version}'s parent v{link} is stored as "
                    f"{link_meta.get('model_name')} v{link_meta.get('version')}"
                )
            version, link = link, link_meta.get("delta_of")
        model = pickle.loads(payload)  # only after every HMAC verified above
        if deltas:
            model = delta.apply(model, deltas[::-1])
        return cls(model=model, offsets=offsets, order=order, **meta)


MOVES_KEPT = 200
"""A registry keeps its newest moves: what charts mark, not an audit log."""


MoveKind = Literal["promote", "rollback", "serve", "pin", "unpin"]


class RegistryMove(BaseModel):
    """One change of what a model's registry names: when, which, and to what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(description="When (epoch seconds).")
    kind: MoveKind
    alias: str | None = Field(None, description="The alias moved (promote and rollback).")
    version: int | None = Field(None, description="The version named after the move.")
    model: str | None = Field(None, description="The model served after a serve move.")


class RegistryDocument(BaseModel):
    """A model's registry: aliases, each alias's past versions, pinned versions.

    Changed only through a store's :meth:`SnapshotStore.update_registry`, which applies one of
    the pure changes below atomically (compare and set); each change that alters the document
    raises its ``revision`` by one, so copies of it can be ordered.

    >>> doc = RegistryDocument().promoted("champion", 3).promoted("champion", 5)
    >>> doc.aliases, doc.history, doc.revision
    ({'champion': 5}, {'champion': [3]}, 2)
    >>> doc.rolled_back("champion").aliases
    {'champion': 3}
    >>> doc.promoted("champion", 5) == doc  # no change, no new revision
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = Field(0, ge=0, description="Raised by one with every change.")
    aliases: dict[str, int] = Field(default_factory=dict)
    history: dict[str, list[int]] = Field(
        default_factory=dict, description="Per alias, the versions it named before, oldest first."
    )
    pins: list[int] = Field(default_factory=list, description="Never deleted by retention.")
    challengers: list[str] = Field(
        default_factory=list,
        description="Models retrained from this one's spec (by the daily drift job), which the "
        "trainer learns live beside it, as if configured.",
    )
    serves: str | None = Field(
        None,
        description="The model whose champion (its alias, else its newest version) the API "
        "serves under this name: a challenger promoted across names. None: this model's own.",
    )
    serves_history: list[str] = Field(
        default_factory=list,
        description='The models this name served before, oldest first ("": its own), since '
        "its own champion last moved while served: what a rollback returns to first.",
    )

    moves: list[RegistryMove] = Field(
        default_factory=list,
        description=f"The newest {MOVES_KEPT} moves (promotions, rollbacks, serving moves, "
        "pins), oldest first: when each happened, for charts and the model page.",
    )

    def noted(self, before: RegistryDocument, move: RegistryMove) -> RegistryDocument:
        """This document with ``move`` journaled, when it differs from ``before`` (a change
        that changed nothing is no move)."""
        if self == before:
            return self
        return self.model_copy(update={"moves": [*self.moves, move][-MOVES_KEPT:]})

    def _changed(self, **update: Any) -> RegistryDocument:
        return self.model_copy(update={**update, "revision": self.revision + 1})

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)

    def promoted(self, alias: str, version: int) -> RegistryDocument:
        current = self.aliases.get(alias)
        if current == version:
            return self
        history = dict(self.history)
        if current is not None:
            history[alias] = [*history.get(alias, []), current]
        return self._changed(aliases={**self.aliases, alias: version}, history=history)

    def rolled_back(self, alias: str) -> RegistryDocument:
        """The alias back at the version it named before; SnapshotError when there is none."""
        past = self.history.get(alias) or []
        if not past:
            raise SnapshotError(f"{alias!r} has no earlier version to roll back to")
        return self._changed(
            aliases={**self.aliases, alias: past[-1]}, history={**self.history, alias: past[:-1]}
        )

    def serving(self, model: str | None) -> RegistryDocument:
        """This name serves ``model``'s champion from now on (None: its own)."""
        if model == self.serves:
            return self
        return self._changed(serves=model, serves_history=[*self.serves_history, self.serves or ""])

    def serving_rolled_back(self) -> RegistryDocument:
        """Back to the model served before the newest serving move."""
        if not self.serves_history:
            raise SnapshotError("no earlier model served to return to")
        *past, last = self.serves_history
        return self._changed(serves=last or None, serves_history=past)

    def pinned(self, version: int, pinned: bool = True) -> RegistryDocument:
        pins = set(self.pins) | {version} if pinned else set(self.pins) - {version}
        return self if sorted(pins) == self.pins else self._changed(pins=sorted(pins))

    def with_challenger(self, name: str) -> RegistryDocument:
        if name in self.challengers:
            return self
        return self._changed(challengers=[*self.challengers, name])

    def spared(self) -> set[int]:
        """The versions retention keeps whatever their age: pinned, aliased, or an alias's
        rollback target."""
        kept = set(self.pins) | set(self.aliases.values())
        return kept | {v for past in self.history.values() for v in past}


RegistryChange = Callable[[RegistryDocument], RegistryDocument]


class SnapshotStore(ABC):
    """Where versions live, the one interface callers see, sealed: its backends are the ones in
    this package (each ``@final``), and callers reach nothing past this interface. Versions are
    immutable; ``latest`` moves with every new one. A backend raises only streamlearn's errors:
    the backend's own (``RedisError``, obstore's) become
    :class:`~streamlearn.errors.StoreUnavailable` where they are raised."""

    @abstractmethod
    def models(self) -> list[str]: ...

    @abstractmethod
    def next_version(self, model_name: str) -> int: ...

    @abstractmethod
    def put(self, snapshot: Snapshot) -> None:
        """Store durably and atomically, then make it the model's latest version."""

    @abstractmethod
    def get(
        self, model_name: str, version: int | None = None, loaded: tuple[int, Any] | None = None
    ) -> Snapshot:
        """A version, or the latest one when ``version`` is None. Raises SnapshotNotFound. A
        delta snapshot is built from its chain, which stops at ``loaded`` (a version already
        in memory and its model) when the chain passes through it."""

    @abstractmethod
    def latest_version(self, model_name: str) -> int | None: ...

    @abstractmethod
    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        """Verified metadata of a version (the latest when None), without the model."""

    @abstractmethod
    def versions(
        self, model_name: str, limit: int | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Metadata of the newest ``limit`` versions (all when None) below ``before``, oldest
        first, read from the store's index (not from the snapshots)."""

    @abstractmethod
    def version_times(self, model_name: str) -> list[tuple[int, float]]:
        """Every version with its creation time, oldest first: what retention plans with."""

    @abstractmethod
    def delete(self, model_name: str, version: int) -> None: ...

    @abstractmethod
    def evict(self, model_name: str, versions: list[int]) -> None:
        """Drop the hot copies of ``versions``, keeping them in the durable tier."""

    @abstractmethod
    def read_registry(self, model_name: str) -> RegistryDocument: ...

    @abstractmethod
    def update_registry(self, model_name: str, change: RegistryChange) -> RegistryDocument:
        """Apply ``change`` to the current document and store the result, atomically: when
        another writer got there first, ``change`` is applied again to what it wrote. A change
        that returns the document unchanged writes nothing; one that raises writes nothing and
        its error propagates. Returns the document as stored."""

    @abstractmethod
    def notices(self, wait_s: float = 1.0) -> Iterator[str | None]:
        """What changes, as it changes: ``""`` first, once listening (what changed before has
        no notice coming, so a follower looks for itself then); then ``<model>:<version>`` for
        each new version and ``<model>:registry`` for each registry change; and None after
        each ``wait_s`` without one, so a follower can check whether to stop. Raises
        StoreUnavailable when the store cannot be followed."""


class SignedBlobs(SnapshotStore):
    """What the single backends share: versions are signed blobs, resolved and verified here; a
    backend lists version numbers and reads one blob."""

    _key: bytes

    @property
    def key(self) -> bytes:
        return self._key

    @abstractmethod
    def version_numbers(self, model_name: str) -> list[int]: ...

    @abstractmethod
    def _read(self, model_name: str, version: int) -> bytes | None: ...

    def latest_version(self, model_name: str) -> int | None:
        numbers = self.version_numbers(model_name)
        return numbers[-1] if numbers else None

    def blob(self, model_name: str, version: int | None) -> bytes:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        blob = self._read(model_name, version)
        if blob is None:
            raise SnapshotNotFound(f"model {model_name!r} has no version {version}")
        return blob

    def get(
        self, model_name: str, version: int | None = None, loaded: tuple[int, Any] | None = None
    ) -> Snapshot:
        return Snapshot.verify(
            self.blob(model_name, version),
            self._key,
            lambda parent: self.blob(model_name, parent),
            loaded,
        )

    @abstractmethod
    def _index_entries(self, model_name: str, versions: list[int]) -> list[bytes | None]:
        """The signed index entries of ``versions`` (None where one is missing)."""

    def indexed(self, model_name: str, versions: list[int]) -> dict[int, dict[str, Any]]:
        """Verified metadata of those of ``versions`` the index has."""
        entries = self._index_entries(model_name, versions)
        return {
            v: Snapshot.verify_index_entry(e, self._key)
            for v, e in zip(versions, entries, strict=True)
            if e is not None
        }

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            version = self.latest_version(model_name)
        if version is not None and (found := self.indexed(model_name, [version])):
            return found[version]
        # Not indexed (written before the index, or the index write was cut short): the blob.
        return Snapshot.verify_meta(self.blob(model_name, version), self._key)

    def versions(
        self, model_name: str, limit: int | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        page = page_of(self.version_numbers(model_name), limit, before)
        found = self.indexed(model_name, page)
        return [found[v] if v in found else self.meta(model_name, v) for v in page]

    def version_times(self, model_name: str) -> list[tuple[int, float]]:
        return [(m["version"], m["created_at"]) for m in self.versions(model_name)]


def page_of(numbers: list[int], limit: int | None, before: int | None) -> list[int]:
    """The newest ``limit`` of ``numbers`` (ascending) below ``before``."""
    if before is not None:
        numbers = [v for v in numbers if v < before]
    return numbers if limit is None else numbers[-limit:] if limit > 0 else []
