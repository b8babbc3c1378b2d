"""Delta snapshots: a model rebuilt from a chain of deltas is the full snapshot, bit for bit, for
every kind of learner; what goes whole and when; retention keeps chains whole; the API applies a
delta to the model it holds without reading the rest of the chain."""

from __future__ import annotations

import pickle
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streamlearn.errors import SnapshotError, SnapshotNotFound
from streamlearn.fingerprint import fingerprint
from streamlearn.learning import ModelSpec
from streamlearn.retention import RetentionPolicy, plan_retention
from streamlearn.serving import ModelHolder
from streamlearn.snapshots import ObjectSnapshotStore
from streamlearn.snapshots.base import RegistryDocument, Snapshot
from streamlearn.snapshots.delta import TABLE_MIN, DeltaEncoder, apply
from tests.factories import checkpoint_rounds, delta_training, item_example

KEY = b"delta-key"
SPECS = {
    "logistic": ModelSpec(),
    "hashed": ModelSpec(encoding="hash", hash_features=2**20),
    "fm": ModelSpec.model_validate({"learner": {"kind": "fm", "n_factors": 4}}),
    "adpredictor": ModelSpec.model_validate({"learner": {"kind": "ad_predictor"}}),
}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_model_rebuilt_from_its_chain_is_the_full_snapshot_bit_for_bit(
    kind: str, tmp_path: Path
) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", KEY)
    t = delta_training(SPECS[kind])
    # A first round that touches thousands of weights, then small ones: deltas.
    made = checkpoint_rounds(t, store, rounds=1, per_round=6000) + checkpoint_rounds(
        t, store, 8, 300
    )
    kinds = [s.delta_of for s, _ in made]
    assert kinds[0] is None and kinds[5] is None  # whole every 5
    assert all(kinds[i] == i for i in (1, 2, 3, 4, 6, 7, 8)), kinds  # delta of the one before
    for snapshot, full in made:
        loaded = store.get(t.spec.name, snapshot.version)
        assert fingerprint(loaded.model) == full, snapshot.version
        assert loaded.delta_of == snapshot.delta_of
    deltas = [len(s.payload or b"") for s, _ in made if s.delta_of is not None]
    wholes = [len(s.payload or b"") for s, _ in made if s.delta_of is None]
    assert max(deltas) < min(wholes) / 2, (deltas, wholes)


def test_a_failed_checkpoint_is_never_a_parent(tmp_path: Path) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", KEY)
    t = delta_training(ModelSpec())
    checkpoint_rounds(t, store, rounds=1, per_round=6000)
    rng = random.Random(3)
    t.learn(item_example(rng, 4000), 0, 10**6)
    t.snapshot(2)  # never written: the store was down, say
    t.learn(item_example(rng, 4000), 0, 10**6 + 1)
    written = t.snapshot(2)
    assert written.delta_of == 1
    store.put(written)
    rebuilt = store.get("ctr", 2).model
    assert fingerprint(rebuilt) == fingerprint(pickle.loads(pickle.dumps(t.learner, protocol=5)))


def table(n: int, value: float = 0.25) -> dict[str, Any]:
    return {f"w{i}": value for i in range(n)}


def test_what_goes_whole() -> None:
    enc = DeltaEncoder(full_every=100, max_changed=0.5)
    model: dict[str, Any] = {"a": table(TABLE_MIN), "b": table(3 * TABLE_MIN)}
    enc.committed(1, enc.encode(model))
    # A zero's sign, a weight that became an int: changed, though equal.
    model["a"]["w1"] = -0.0
    model["a"]["w0"] = 0.0
    model["a"]["w2"] = 1
    model["b"]["w3"] = 0.25
    # A key gone from a table: that table whole, the other a delta.
    del model["a"]["w9"]
    model["a"]["w9"] = 0.25
    encoded = enc.encode(model)
    _, parts = pickle.loads(encoded.payload)
    assert [kind for kind, _ in parts] == ["full", "delta"]
    assert parts[1][1] == {}
    base = {"a": table(TABLE_MIN), "b": table(3 * TABLE_MIN)}
    rebuilt = apply(base, [encoded.payload])
    assert fingerprint(rebuilt) == fingerprint(model)
    assert base == {"a": table(TABLE_MIN), "b": table(3 * TABLE_MIN)}  # left as it was
    enc.committed(2, encoded)
    # More than max_changed of all entries: whole.
    for key in list(model["b"])[: 2 * TABLE_MIN + 100]:
        model["b"][key] = 0.5
    assert enc.encode(model).delta_of is None


def test_a_zero_sign_change_in_a_float_table_is_a_change() -> None:
    enc = DeltaEncoder(full_every=100, max_changed=0.5)
    model = {"w": table(TABLE_MIN, 0.0)}
    enc.committed(1, enc.encode(model))
    model["w"]["w5"] = -0.0
    encoded = enc.encode(model)
    _, parts = pickle.loads(encoded.payload)
    assert parts == [("delta", {"w5": -0.0})]
    assert str(apply({"w": table(TABLE_MIN, 0.0)}, [encoded.payload])["w"]["w5"]) == "-0.0"


def test_retention_keeps_a_kept_deltas_chain_and_an_hours_whole_snapshot() -> None:
    # One a minute for three hours, whole every 20: 1, 21, 41, ...
    versions = [(v, v * 60.0) for v in range(1, 181)]
    parents = {v: v - 1 for v in range(1, 181) if (v - 1) % 20}
    policy = RetentionPolicy(
        keep_last=3, keep_within_hourly_s=10 * 3600.0, keep_within_daily_s=0, hot_last=1
    )
    plan = plan_retention(versions, RegistryDocument().pinned(50), policy, 181 * 60.0, parents)
    # The newest three (178-180) need 161-177; the pin 50 needs 41-49; each hour its newest
    # whole snapshot (41 in the first, 101 in the second, 161 in the third), no chain.
    assert plan.kept == [*range(41, 51), 101, *range(161, 181)]
    assert plan.hot == list(range(161, 181))
    assert not set(plan.delete) & set(plan.kept)


def test_the_api_applies_a_delta_to_the_version_it_holds(tmp_path: Path) -> None:
    store = ObjectSnapshotStore(f"file://{tmp_path}", KEY)
    t = delta_training(ModelSpec())
    checkpoint_rounds(t, store, rounds=1, per_round=6000)
    holder = ModelHolder(store, "ctr")
    assert holder.refresh() and holder.current is not None
    v1 = holder.current.learner
    held = fingerprint(v1)
    made = checkpoint_rounds(t, store, rounds=1, per_round=200)
    assert made[0][0].delta_of == 1
    # Version 1 gone from the store: only the model held can be the delta's parent.
    store.delete("ctr", 1)
    with pytest.raises(SnapshotNotFound):
        store.get("ctr", 2)
    assert holder.refresh() and holder.current.version == 2
    assert fingerprint(holder.current.learner) == made[0][1]
    assert holder.current.offsets == {0: 6200}
    assert fingerprint(v1) == held  # the model that served v1, left as it was


def test_a_loaded_delta_put_again_is_written_whole(tmp_path: Path) -> None:
    """CI: a version loaded from its chain, changed and stored under a new number (as a test
    tampering with weights does) kept ``delta_of`` while its model was pickled whole, and the
    new version could not be loaded."""
    store = ObjectSnapshotStore(f"file://{tmp_path}", KEY)
    t = delta_training(ModelSpec())
    checkpoint_rounds(t, store, rounds=1, per_round=6000)
    checkpoint_rounds(t, store, rounds=1, per_round=200)
    loaded = store.get("ctr", 2)
    assert loaded.delta_of == 1
    copy = replace(loaded, version=store.next_version("ctr"))
    store.put(copy)
    again = store.get("ctr", copy.version)
    assert again.delta_of is None and store.meta("ctr", copy.version)["delta_of"] is None
    assert fingerprint(again.model) == fingerprint(loaded.model)


def test_a_chain_only_goes_down_through_its_own_models_versions(tmp_path: Path) -> None:
    """A signature says who wrote a blob, not where it belongs: a link copied from another
    model (signed with the same key) or a delta of a later version is refused, not applied."""
    store = ObjectSnapshotStore(f"file://{tmp_path}", KEY)
    for name in ("ctr", "other"):
        t = delta_training(ModelSpec(name=name))
        checkpoint_rounds(t, store, rounds=1, per_round=6000)
        checkpoint_rounds(t, store, rounds=2, per_round=200)
    assert store.meta("ctr", 3)["delta_of"] == 2
    assert fingerprint(
        Snapshot.verify(store.blob("ctr", 3), KEY, lambda v: store.blob("ctr", v)).model
    )
    with pytest.raises(SnapshotError, match="ctr v3's parent v2 is stored as other v2"):
        Snapshot.verify(store.blob("ctr", 3), KEY, lambda v: store.blob("other", v))
    upward = replace(store.get("ctr", 2), version=1, delta_of=2, payload=b"\x80")
    with pytest.raises(SnapshotError, match="ctr v1 is a delta of v2, not an earlier one"):
        Snapshot.verify(upward.sign(KEY), KEY, lambda v: store.blob("ctr", v))
