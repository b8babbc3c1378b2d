"""A model snapshot, its signed wire form, and the store interface every backend implements.

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
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import orjson

from streamlearn import __version__, signing
from streamlearn.errors import SnapshotNotFound

SCHEMA_VERSION = 1


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

    def meta(self) -> dict[str, Any]:
        """Everything but the model: what listings show."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        meta["offsets"] = {str(p): o for p, o in self.offsets.items()}
        return meta

    def sign(self, key: bytes) -> bytes:
        meta = orjson.dumps(self.meta())
        body = struct.pack(">I", len(meta)) + meta + pickle.dumps(self.model, protocol=5)
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
        return cls._split(cls._body(blob, key))[0]

    @classmethod
    def verify(cls, blob: bytes, key: bytes) -> Snapshot:
        meta, payload = cls._split(cls._body(blob, key))
        # JSON object keys are strings: partitions come back as ints.
        offsets = {int(p): o for p, o in meta.pop("offsets").items()}
        model = pickle.loads(payload)  # only after the HMAC verified above
        return cls(model=model, offsets=offsets, **meta)


class SignedBlobs:
    """What every backend shares: versions are signed blobs, resolved and verified here; a
    backend only lists version numbers and reads one blob."""

    _key: bytes

    def version_numbers(self, model_name: str) -> list[int]:
        raise NotImplementedError

    def _read(self, model_name: str, version: int) -> bytes | None:
        raise NotImplementedError

    def latest_version(self, model_name: str) -> int | None:
        numbers = self.version_numbers(model_name)
        return numbers[-1] if numbers else None

    def _blob(self, model_name: str, version: int | None) -> bytes:
        if version is None:
            version = self.latest_version(model_name)
            if version is None:
                raise SnapshotNotFound(f"model {model_name!r} has no snapshot yet")
        blob = self._read(model_name, version)
        if blob is None:
            raise SnapshotNotFound(f"model {model_name!r} has no version {version}")
        return blob

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        return Snapshot.verify(self._blob(model_name, version), self._key)

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        return Snapshot.verify_meta(self._blob(model_name, version), self._key)

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        return [self.meta(model_name, v) for v in self.version_numbers(model_name)]


def empty_registry() -> dict[str, Any]:
    """A model's registry document: aliases, each alias's past versions, pinned versions."""
    return {"aliases": {}, "history": {}, "pins": []}


class SnapshotStore(Protocol):
    """Where versions live. Versions are immutable; ``latest`` moves with every new one."""

    def models(self) -> list[str]: ...

    def next_version(self, model_name: str) -> int: ...

    def put(self, snapshot: Snapshot) -> None:
        """Store durably and atomically, then make it the model's latest version."""
        ...

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        """A version, or the latest one when ``version`` is None. Raises SnapshotNotFound."""
        ...

    def latest_version(self, model_name: str) -> int | None: ...

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        """Verified metadata of a version (the latest when None), without the model."""
        ...

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        """Metadata of every stored version, oldest first."""
        ...

    def delete(self, model_name: str, version: int) -> None: ...

    def read_registry(self, model_name: str) -> dict[str, Any]:
        """The model's registry document (see :func:`empty_registry`)."""
        ...

    def write_registry(self, model_name: str, doc: dict[str, Any]) -> None: ...
