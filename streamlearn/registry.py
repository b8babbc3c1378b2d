"""The model registry: versions with their metadata, aliases that move, pins, retention.

An alias (``champion`` by default) names the version the API serves; promoting and rolling back
move the pointer and never touch a snapshot. Each alias keeps its history, so a rollback returns
to the version it pointed at before. Retention deletes old versions but never an aliased or
pinned one, nor the newest (the trainer's lineage continues from it).

>>> import tempfile
>>> from streamlearn.snapshots.base import Snapshot
>>> from streamlearn.snapshots.objects import ObjectSnapshotStore
>>> from streamlearn.retention import RetentionPolicy
>>> store = ObjectSnapshotStore(f"file://{tempfile.mkdtemp()}", b"key")
>>> for v in (1, 2, 3):
...     store.put(Snapshot(model_name="ctr", version=v, model={}, offsets={}, samples_seen=v,
...         metrics={}, spec={}, parent_version=v - 1 or None, created_at=float(v)))
>>> reg = Registry(store)
>>> reg.promote("ctr", 1); reg.promote("ctr", 3); reg.served_version("ctr")
3
>>> reg.rollback("ctr")
1
>>> reg.retain("ctr", RetentionPolicy(keep_last=1), now=1e9).delete
[2]
>>> [(v["version"], v["aliases"]) for v in reg.versions("ctr")]
[(1, ['champion']), (3, [])]
"""

from __future__ import annotations

from typing import Any

from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.retention import RetentionPlan, RetentionPolicy, plan_retention
from streamlearn.snapshots.base import RegistryDocument, SnapshotStore

CHAMPION = "champion"

__all__ = ["CHAMPION", "Registry", "RegistryDocument"]


class Registry:
    """Versions and aliases over a store. Every change is one atomic
    :meth:`~streamlearn.snapshots.base.SnapshotStore.update_registry`, so the admin API, the
    CLI and the monitor's automatic rollback can all write at once and lose nothing."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    def versions(
        self, model_name: str, limit: int | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        """The metadata (metrics included) of the newest ``limit`` versions below ``before``
        (every version when None), oldest first, with their aliases and pins."""
        doc = self.store.read_registry(model_name)
        return self._labelled(doc, self.store.versions(model_name, limit, before))

    def named(self, model_name: str, doc: RegistryDocument) -> list[dict[str, Any]]:
        """The metadata of the versions ``doc`` aliases or pins, oldest first."""
        numbers = sorted(set(doc.aliases.values()) | set(doc.pins))
        metas = []
        for v in numbers:
            try:
                metas.append(self.store.meta(model_name, v))
            except SnapshotNotFound:
                continue  # named, but deleted by hand from the store
        return self._labelled(doc, metas)

    @staticmethod
    def _labelled(doc: RegistryDocument, metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for meta in metas:
            meta["aliases"] = doc.aliases_of(meta["version"])
            meta["pinned"] = meta["version"] in doc.pins
            out.append(meta)
        return out

    def show(self, model_name: str, version: int | str | None = None) -> dict[str, Any]:
        """One version's metadata; ``version`` may be a number, an alias, or None (latest)."""
        return self.store.meta(model_name, self.resolve(model_name, version))

    def resolve(self, model_name: str, version: int | str | None) -> int | None:
        if version is None or isinstance(version, int):
            return version
        if version.isascii() and version.isdigit():  # "²" is a digit to str.isdigit, not to int
            return int(version)
        aliases = self.store.read_registry(model_name).aliases
        if version not in aliases:
            raise SnapshotNotFound(f"model {model_name!r} has no alias {version!r}")
        return aliases[version]

    def served_version(self, model_name: str, alias: str = CHAMPION) -> int | None:
        """The version an alias names, or the latest version when the alias is not set."""
        aliases = self.store.read_registry(model_name).aliases
        return aliases[alias] if alias in aliases else self.store.latest_version(model_name)

    def promote(self, model_name: str, version: int, alias: str = CHAMPION) -> None:
        self.store.get(model_name, version)  # exists, and the snapshot itself verifies
        self.store.update_registry(model_name, lambda d: d.promoted(alias, version))

    def rollback(self, model_name: str, alias: str = CHAMPION, expected: int | None = None) -> int:
        """Point the alias back at the version it named before; returns the version it names
        after. With ``expected``, only while the alias still names that version: one that has
        moved on (rolled back already, say) is left as it is."""

        def back(doc: RegistryDocument) -> RegistryDocument:
            current = doc.aliases.get(alias)
            if expected is not None and current is not None and current != expected:
                return doc
            try:
                return doc.rolled_back(alias)
            except SnapshotError as exc:
                raise SnapshotError(f"model {model_name!r}: {exc}") from None

        return self.store.update_registry(model_name, back).aliases[alias]

    def pin(self, model_name: str, version: int, pinned: bool = True) -> None:
        self.store.meta(model_name, version)
        self.store.update_registry(model_name, lambda d: d.pinned(version, pinned))

    def add_challenger(self, model_name: str, challenger: str) -> None:
        """``challenger`` learns live beside ``model_name`` from now on (the trainer follows)."""
        self.store.update_registry(model_name, lambda doc: doc.with_challenger(challenger))

    def retain(self, model_name: str, policy: RetentionPolicy, now: float) -> RetentionPlan:
        """Apply ``policy`` (:mod:`streamlearn.retention`): delete what it does not keep, and
        drop the hot copies of what it keeps in the archive only. Returns the plan applied."""
        doc = self.store.read_registry(model_name)
        plan = plan_retention(self.store.version_times(model_name), doc, policy, now)
        for v in plan.delete:
            self.store.delete(model_name, v)
        self.store.evict(model_name, [v for v in plan.kept if v not in plan.hot])
        return plan
