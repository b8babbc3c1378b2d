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

A challenger can be served under the champion's name (``ctr-aware``'s newest version here):
what the API serves is :meth:`Registry.serving`, and a step back undoes the newest move of it.

>>> store.put(Snapshot(model_name="ctr-aware", version=1, model={}, offsets={}, samples_seen=1,
...     metrics={}, spec={}, parent_version=None, created_at=4.0))
>>> reg.serve("ctr", "ctr-aware")
('ctr-aware', 1)
>>> reg.step_back("ctr")
('ctr', 1)

Each move is journaled with its time (the newest 200), which charts mark:

>>> [(m.kind, m.version or m.model) for m in store.read_registry("ctr").moves]
[('promote', 1), ('promote', 3), ('rollback', 1), ('serve', 'ctr-aware'), ('rollback', 'ctr')]
"""

from __future__ import annotations

from typing import Any

from streamlearn.clock import Clock, SystemClock
from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.retention import RetentionPlan, RetentionPolicy, plan_retention
from streamlearn.snapshots.base import (
    MoveKind,
    RegistryDocument,
    RegistryMove,
    SnapshotStore,
)

CHAMPION = "champion"

__all__ = ["CHAMPION", "Registry", "RegistryDocument", "ServedRef", "tag"]

ServedRef = tuple[str, int | None]
"""What is served under a name: the model, and its version (None: it has none yet)."""


def tag(served: ServedRef) -> str:
    """``<model>:v<version>``, as recommendation events name a version."""
    model, version = served
    return f"{model}:v{version}" if version is not None else f"{model} (no version)"


class Registry:
    """Versions and aliases over a store. Every change is one atomic
    :meth:`~streamlearn.snapshots.base.SnapshotStore.update_registry`, so the admin API, the
    CLI and the monitor's automatic rollback can all write at once and lose nothing."""

    def __init__(self, store: SnapshotStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()

    def _move(self, kind: MoveKind, **what: Any) -> RegistryMove:
        return RegistryMove(at=self.clock.now(), kind=kind, **what)

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

    def serving(self, name: str) -> ServedRef:
        """What the API serves under ``name``: the model (``name`` itself unless a challenger
        was promoted across names) and that model's champion, else its newest version."""
        model = self.store.read_registry(name).serves or name
        return model, self.served_version(model)

    def promote(self, model_name: str, version: int, alias: str = CHAMPION) -> None:
        """Point ``alias`` at ``version``. The champion moved while this name serves its own
        model starts the name's serving history afresh: a rollback undoes this move first."""
        self.store.get(model_name, version)  # exists, and the snapshot itself verifies

        def move(before: RegistryDocument) -> RegistryDocument:
            doc = before.promoted(alias, version)
            if alias == CHAMPION and doc.serves is None and doc.serves_history:
                doc = doc.model_copy(update={"serves_history": []})
            return doc.noted(before, self._move("promote", alias=alias, version=version))

        self.store.update_registry(model_name, move)

    def serve(self, name: str, model: str, version: int | None = None) -> ServedRef:
        """Serve ``model`` under ``name`` (the API's model name): another model's champion (with
        ``version``, that model's champion is moved there first; without, it serves what the
        model serves itself: its champion, else its newest version), or with ``model == name``
        its own again. Returns what is served after."""
        if version is not None:
            self.promote(model, version)
        elif self.served_version(model) is None:
            raise SnapshotNotFound(f"model {model!r} has no version to serve")
        served = None if model == name else model
        self.store.update_registry(
            name, lambda d: d.serving(served).noted(d, self._move("serve", model=model))
        )
        return self.serving(name)

    def step_back(self, name: str, expected: ServedRef | None = None) -> ServedRef:
        """Undo the newest move of what ``name`` serves: back to the model served before while
        the name has a serving history (a promotion across names), else its champion back to
        the version it named before. With ``expected`` (the model and version served when the
        step was decided), only while that is still served: a step already taken (by a run
        before a crash, say) is not taken twice. Returns what is served after."""

        def back(doc: RegistryDocument) -> RegistryDocument:
            if expected is not None:
                model, version = expected
                if (doc.serves or name) != model:
                    return doc
                if not doc.serves_history:
                    current = doc.aliases.get(CHAMPION)
                    if version is not None and current is not None and current != version:
                        return doc
            try:
                if doc.serves_history:
                    after = doc.serving_rolled_back()
                    move = self._move("rollback", model=after.serves or name)
                else:
                    after = doc.rolled_back(CHAMPION)
                    move = self._move("rollback", alias=CHAMPION, version=after.aliases[CHAMPION])
            except SnapshotError as exc:
                raise SnapshotError(f"model {name!r}: {exc}") from None
            return after.noted(doc, move)

        self.store.update_registry(name, back)
        return self.serving(name)

    def rollback(self, model_name: str, alias: str = CHAMPION) -> int:
        """Point the alias back at the version it named before; returns the version it names
        after (:meth:`step_back` undoes what the API serves, promotions across names first)."""

        def back(doc: RegistryDocument) -> RegistryDocument:
            try:
                after = doc.rolled_back(alias)
            except SnapshotError as exc:
                raise SnapshotError(f"model {model_name!r}: {exc}") from None
            move = self._move("rollback", alias=alias, version=after.aliases[alias])
            return after.noted(doc, move)

        return self.store.update_registry(model_name, back).aliases[alias]

    def pin(self, model_name: str, version: int, pinned: bool = True) -> None:
        self.store.meta(model_name, version)
        move = self._move("pin" if pinned else "unpin", version=version)
        self.store.update_registry(model_name, lambda d: d.pinned(version, pinned).noted(d, move))

    def add_challenger(self, model_name: str, challenger: str) -> None:
        """``challenger`` learns live beside ``model_name`` from now on (the trainer follows)."""
        self.store.update_registry(model_name, lambda doc: doc.with_challenger(challenger))

    def retain(self, model_name: str, policy: RetentionPolicy, now: float) -> RetentionPlan:
        """Apply ``policy`` (:mod:`streamlearn.retention`): delete what it does not keep, and
        drop the hot copies of what it keeps in the archive only. Returns the plan applied."""
        doc = self.store.read_registry(model_name)
        metas = self.store.versions(model_name)
        times = [(m["version"], m["created_at"]) for m in metas]
        parents = {m["version"]: m["delta_of"] for m in metas if m.get("delta_of") is not None}
        plan = plan_retention(times, doc, policy, now, parents)
        for v in plan.delete:
            self.store.delete(model_name, v)
        self.store.evict(model_name, [v for v in plan.kept if v not in plan.hot])
        return plan
