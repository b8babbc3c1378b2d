"""Delta snapshots: a checkpoint that writes only the weights changed since its parent.

A model's large dicts (its weights: River keeps them in dicts, or in ``VectorDict``\\ s that
pickle as dicts) are its *tables*: pickling the model with a ``persistent_id`` that takes every
dict of at least :data:`TABLE_MIN` entries out of the stream leaves a small *skeleton* (the
pipeline, its metrics, the learner's counters) and the tables, numbered in the order pickle meets
them, which is the same for a model and for its copy loaded from a snapshot. A large
``defaultdict``'s items are a table too, its factory kept in the skeleton (see
``_Splitter.reducer_override``).

A delta's payload is the whole skeleton and, per table, either the entries that changed or were
added since the parent (``("delta", entries)``, diffed against the parent's table of the same
number) or the whole table (``("full", table)``: a table that is new, or that lost or reordered
keys since the parent, which growth alone never does). Applying a delta copies the parent's
tables, updates them with the entries (a dict keeps an updated key in its place and appends a new
one), and unpickles the skeleton over them: the model rebuilt is the full snapshot's, bit for bit
(:func:`~streamlearn.fingerprint.fingerprint`: every weight the same to the bit; and its tables'
keys in the same order).

Changed is exact: float tables are compared as 64-bit patterns (numpy, one pass in C), so -0.0
against 0.0 and a NaN's payload count; other values (vectors, ints) as their pickles. A model
is written whole every ``full_every`` checkpoints, and whenever more than ``max_changed`` of its
entries changed (a delta then saves little and costs a parent to load).

>>> enc = DeltaEncoder(full_every=10, max_changed=0.5)
>>> model = {"weights": {f"w{i}": 0.0 for i in range(2000)}, "seen": 1}
>>> first = enc.encode(model)
>>> first.delta_of is None
True
>>> enc.committed(1, first)
>>> model["weights"]["w7"] = 0.5
>>> model["weights"]["new"] = 1.0
>>> second = enc.encode(model)
>>> second.delta_of, second.chain, second.changed
(1, 1, 2)
>>> rebuilt = apply(pickle.loads(first.payload), [second.payload])
>>> from streamlearn.fingerprint import fingerprint
>>> fingerprint(rebuilt) == fingerprint(model)
True
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TABLE_MIN = 1024
"""A dict this large is a table: kept apart and diffed. Smaller ones ride in the skeleton."""


class _Splitter(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        # Held here, so no table's id is reused by another while pickling goes on.
        self.tables: list[dict[Any, Any]] = []
        self._slots: dict[int, int] = {}

    def reducer_override(self, obj: Any) -> Any:
        # A defaultdict (River's optimizers keep their sums in them, its factorization machine
        # its latent vectors) pickles its items, not a dict: its items become a table, and its
        # factory stays in the skeleton, the same object as the rest of the model refers to
        # (a factorization machine's draws from the model's own random generator).
        if type(obj) is collections.defaultdict and len(obj) >= TABLE_MIN:
            return _defaultdict_of, (obj.default_factory, dict(obj))
        return NotImplemented

    def persistent_id(self, obj: Any) -> int | None:
        if type(obj) is not dict or len(obj) < TABLE_MIN:
            return None
        slot = self._slots.get(id(obj))
        if slot is None:
            slot = self._slots[id(obj)] = len(self.tables)
            self.tables.append(obj)
        return slot


def _defaultdict_of(factory: Any, items: dict[Any, Any]) -> collections.defaultdict[Any, Any]:
    table: collections.defaultdict[Any, Any] = collections.defaultdict(factory)
    table.update(items)
    return table


class _Joiner(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tables: Sequence[dict[Any, Any]]) -> None:
        super().__init__(file)
        self._tables = tables

    def persistent_load(self, pid: Any) -> Any:
        return self._tables[pid]


def split(model: Any) -> tuple[bytes, list[dict[Any, Any]]]:
    """The model's skeleton and its tables (the live dicts where the model holds dicts)."""
    buffer = io.BytesIO()
    splitter = _Splitter(buffer)
    splitter.dump(model)
    return buffer.getvalue(), splitter.tables


def join(skeleton: bytes, tables: Sequence[dict[Any, Any]]) -> Any:
    """Only ever called on a payload whose signature verified (see ``Snapshot.verify``)."""
    return _Joiner(io.BytesIO(skeleton), tables).load()


@dataclass(frozen=True)
class _Seen:
    """A table's keys and values as of a checkpoint: what the next one's delta is diffed
    against. Values are kept as they were (their bits), not as objects a model may change in
    place (River's factorization machine updates its latent vectors so)."""

    keys: list[Any]
    bits: np.ndarray[Any, Any] | None  # the 64-bit patterns, when every value is a float
    frozen: list[bytes] | None  # else each value pickled

    @classmethod
    def of(cls, table: dict[Any, Any]) -> _Seen:
        if set(map(type, table.values())) <= {float}:
            bits = np.fromiter(table.values(), np.float64, len(table)).view(np.int64)
            return cls(list(table), bits, None)
        return cls(list(table), None, [pickle.dumps(v, protocol=5) for v in table.values()])

    def changed(self, now: _Seen) -> list[int] | None:
        """Where ``now`` differs from these or is new, by position in ``now``; None when
        ``now`` is not these grown (a key gone or moved): then it goes whole."""
        m = len(self.keys)
        if now.keys[:m] != self.keys:
            return None
        if self.bits is not None and now.bits is not None:
            moved: list[int] = np.flatnonzero(now.bits[:m] != self.bits).tolist()
        else:
            before = self.frozen or [pickle.dumps(v, protocol=5) for v in self._values()]
            after = now.frozen or [pickle.dumps(v, protocol=5) for v in now._values()]
            moved = [i for i, (a, b) in enumerate(zip(before, after[:m], strict=True)) if a != b]
        return moved + list(range(m, len(now.keys)))

    def _values(self) -> list[float]:
        return [] if self.bits is None else self.bits.view(np.float64).tolist()


@dataclass(frozen=True)
class Encoded:
    """A checkpoint's model as written: a plain pickle (``delta_of`` None) or a delta."""

    payload: bytes
    delta_of: int | None
    chain: int  # deltas since the last full snapshot, this one included
    changed: int  # entries written in tables' deltas (every entry, for a full snapshot)
    seen: list[_Seen]


class DeltaEncoder:
    """Encodes one model's checkpoints, each against the last one that was committed (made
    durable): a checkpoint that failed to be written is never a parent."""

    def __init__(self, full_every: int, max_changed: float) -> None:
        self.full_every = full_every
        self.max_changed = max_changed
        self._parent: tuple[int, Encoded] | None = None

    def encode(self, model: Any) -> Encoded:
        if self.full_every <= 1:
            return Encoded(pickle.dumps(model, protocol=5), None, 0, 0, [])
        skeleton, tables = split(model)
        seen = [_Seen.of(t) for t in tables]
        whole = sum(len(t) for t in tables)
        parent = self._parent
        if parent is not None and parent[1].chain + 1 < self.full_every:
            version, before = parent
            parts: list[tuple[str, dict[Any, Any]]] = []
            for slot, (table, now) in enumerate(zip(tables, seen, strict=True)):
                moved = before.seen[slot].changed(now) if slot < len(before.seen) else None
                if moved is None:
                    parts.append(("full", table))
                else:
                    parts.append(("delta", {now.keys[i]: table[now.keys[i]] for i in moved}))
            written = sum(len(t) for _, t in parts)
            if written <= self.max_changed * whole:
                payload = pickle.dumps((skeleton, parts), protocol=5)
                return Encoded(payload, version, before.chain + 1, written, seen)
        return Encoded(pickle.dumps(model, protocol=5), None, 0, whole, seen)

    def committed(self, version: int, encoded: Encoded) -> None:
        self._parent = (version, encoded) if self.full_every > 1 else None


def apply(base: Any, deltas: Sequence[bytes]) -> Any:
    """``base`` (a model, left as it is: it may be serving) with ``deltas`` applied in order,
    each a verified delta payload whose parent is the model before it."""
    _, tables = split(base)
    tables = [dict(t) for t in tables]
    skeleton = b""
    for payload in deltas:
        skeleton, parts = pickle.loads(payload)
        grown = []
        for slot, (kind, entries) in enumerate(parts):
            if kind == "full":
                grown.append(entries)
            else:
                table = tables[slot]
                table.update(entries)
                grown.append(table)
        tables = grown
    return join(skeleton, tables) if deltas else base
