"""One contract, every snapshot store: Redis, a local directory, S3 (a local S3-compatible
server, moto's, started here), and the tiered store the trainer uses (Redis + archive): versions,
signatures, the registry and its compare-and-set, change notices, and only streamlearn's errors
when a backend fails."""

from __future__ import annotations

import multiprocessing
import pickle
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
import redis

from streamlearn.errors import SignatureError, SnapshotError, SnapshotNotFound, StoreUnavailable
from streamlearn.fingerprint import fingerprint
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry, RegistryDocument
from streamlearn.retention import RetentionPolicy
from streamlearn.snapshots import RedisSnapshotStore, Snapshot, SnapshotStore
from streamlearn.snapshots.base import MOVES_KEPT
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.snapshots.tiered import TieredSnapshotStore
from tests.conftest import Infra, free_port, wait_until
from tests.factories import checkpoint_rounds, delta_training, trained

pytestmark = pytest.mark.integration

KEY = b"contract-key"


@dataclass
class Backend:
    store: SnapshotStore
    # Replace the stored bytes of a version, as an attacker with write access would.
    overwrite: Callable[[str, int, bytes], None]
    # ...and of its index entry (the metadata listings read).
    overwrite_meta: Callable[[str, int, bytes], None]
    # Redis pushes a notice per change; object storage is polled, so a burst may come as one.
    pushes: bool


Overwrite = Callable[[str, int, bytes], None]


def _redis(infra: Infra) -> tuple[RedisSnapshotStore, Overwrite, Overwrite]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    store = RedisSnapshotStore.from_url(infra.redis_url, KEY, prefix)
    client = redis.Redis.from_url(infra.redis_url)
    return (
        store,
        lambda m, v, blob: client.set(f"{prefix}snap:{m}:{v}", blob) and None,
        lambda m, v, entry: client.hset(f"{prefix}meta:{m}", str(v), entry) and None,
    )


def _objects(url: str, **options: Any) -> tuple[ObjectSnapshotStore, Overwrite, Overwrite]:
    store = ObjectSnapshotStore(url, KEY, notices_poll_s=0.1, **options)
    raw = store._store

    def overwrite(m: str, v: int, blob: bytes) -> None:
        obstore.put(raw, store._path(m, v), blob)

    def overwrite_meta(m: str, v: int, entry: bytes) -> None:
        obstore.put(raw, store._path(m, v).replace(".sls", ".meta"), entry)

    return store, overwrite, overwrite_meta


@pytest.fixture(params=["redis", "directory", "s3", "tiered"])
def backend(
    request: pytest.FixtureRequest, infra: Infra, tmp_path: Path, s3: dict[str, Any]
) -> Backend:
    if request.param == "redis":
        return Backend(*_redis(infra), pushes=True)
    if request.param == "directory":
        return Backend(*_objects(f"file://{tmp_path}/archive"), pushes=False)
    if request.param == "s3":
        return Backend(*_objects(f"s3://snapshots/{uuid.uuid4().hex[:8]}", **s3), pushes=False)
    hot, _, hot_meta = _redis(infra)
    archive, overwrite, _ = _objects(f"file://{tmp_path}/archive")
    # Tampering with the archive alone must be caught too: reads of the hot copy are tested
    # under "redis".
    hot_client = redis.Redis.from_url(infra.redis_url)

    def both(m: str, v: int, blob: bytes) -> None:
        overwrite(m, v, blob)
        hot_client.delete(f"{hot._p}snap:{m}:{v}")

    return Backend(TieredSnapshotStore(hot, archive), both, hot_meta, pushes=True)


def put(store: SnapshotStore, model: str = "ctr") -> int:
    version = store.next_version(model)
    store.put(trained(version))
    return version


def test_versions_latest_and_metadata(backend: Backend) -> None:
    store = backend.store
    assert store.latest_version("ctr") is None and store.versions("ctr") == []
    with pytest.raises(SnapshotNotFound):
        store.get("ctr")
    assert [put(store), put(store)] == [1, 2]
    assert store.latest_version("ctr") == 2
    assert [m["version"] for m in store.versions("ctr")] == [1, 2]
    first = store.get("ctr", 1)
    assert first.version == 1 and first.model.samples_seen > 0
    meta = store.meta("ctr")
    assert "model" not in meta and meta["version"] == 2 and meta["code_version"]
    assert "ctr" in store.models()
    with pytest.raises(SnapshotNotFound):
        store.get("ctr", 3)


def test_versions_are_immutable(backend: Backend) -> None:
    put(backend.store)
    with pytest.raises(SnapshotError, match="immutable"):
        backend.store.put(trained(1))


def test_a_flipped_byte_is_refused(backend: Backend) -> None:
    put(backend.store)
    blob = bytearray(trained(1).sign(KEY))
    blob[len(blob) // 2] ^= 0x01
    backend.overwrite("ctr", 1, bytes(blob))
    with pytest.raises(SignatureError):
        backend.store.get("ctr", 1)
    entry = bytearray(trained(1).sign_meta(KEY))
    entry[-3] ^= 0x01  # a metric changed, say
    backend.overwrite_meta("ctr", 1, bytes(entry))
    with pytest.raises(SignatureError):
        backend.store.meta("ctr", 1)
    with pytest.raises(SignatureError):
        backend.store.versions("ctr")


@dataclass
class Boom:
    """A pickle that runs code when loaded: it creates a file."""

    marker: Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_is_never_unpickled(backend: Backend, tmp_path: Path) -> None:
    put(backend.store)
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Boom(marker)))
    assert marker.exists()  # it would run
    marker.unlink()
    snap = trained(1)
    snap.model = Boom(marker)
    backend.overwrite("ctr", 1, snap.sign(b"the attacker's key"))
    with pytest.raises(SignatureError):
        backend.store.get("ctr", 1)
    assert not marker.exists()


def test_registry_promote_rollback_pin_retain(backend: Backend) -> None:
    reg = Registry(backend.store)
    versions = [put(backend.store) for _ in range(5)]
    assert reg.served_version("ctr") == 5  # no champion yet: the latest
    reg.promote("ctr", 2)
    reg.promote("ctr", 4)
    assert reg.served_version("ctr") == 4 and reg.show("ctr", "champion")["version"] == 4
    assert reg.rollback("ctr") == 2 and reg.served_version("ctr") == 2
    with pytest.raises(SnapshotError, match="roll back"):
        reg.rollback("ctr")
    reg.pin("ctr", 1)
    with pytest.raises(SnapshotNotFound):
        reg.promote("ctr", 99)
    plan = reg.retain("ctr", RetentionPolicy(keep_last=1, hot_last=1), now=time.time())
    assert plan.delete == [3, 4]  # 4 is no rollback target: it was rolled back from
    listed = {m["version"]: (m["aliases"], m["pinned"]) for m in reg.versions("ctr")}
    assert listed == {1: ([], True), 2: (["champion"], False), 5: ([], False)}
    assert versions == [1, 2, 3, 4, 5] and backend.store.latest_version("ctr") == 5
    # Kept but not hot (1, pinned): still read whole, from the archive where there is one.
    assert backend.store.get("ctr", 1).version == 1 and backend.store.get("ctr", 2).version == 2
    with pytest.raises(SnapshotNotFound):
        backend.store.get("ctr", 3)


def test_listing_pages_through_the_index(backend: Backend) -> None:
    store = backend.store
    for _ in range(7):
        put(store)
    assert [m["version"] for m in store.versions("ctr", limit=3)] == [5, 6, 7]
    assert [m["version"] for m in store.versions("ctr", limit=3, before=5)] == [2, 3, 4]
    assert [m["version"] for m in store.versions("ctr", before=3)] == [1, 2]
    assert [v for v, _ in store.version_times("ctr")] == list(range(1, 8))
    # The index, not the snapshots: a listing reads no blob (one that would not verify now).
    backend.overwrite("ctr", 6, b"not a snapshot")
    listed = store.versions("ctr", limit=2)
    assert [(m["version"], m["samples_seen"]) for m in listed] == [(6, 100), (7, 100)]
    with pytest.raises(SignatureError):
        store.get("ctr", 6)


def test_tiered_store_with_redis_down(infra: Infra, tmp_path: Path) -> None:
    """Redis refusing connections: a write reaches the archive and says it was not complete;
    reads fall back to the archive."""
    dead = RedisSnapshotStore.from_url(f"redis://127.0.0.1:{free_port()}/0", KEY, "x.")
    archive = ObjectSnapshotStore(f"file://{tmp_path}/archive", KEY)
    store = TieredSnapshotStore(dead, archive)
    with pytest.raises(StoreUnavailable):
        store.put(trained(store.next_version("ctr")))
    assert archive.latest_version("ctr") == 1
    assert store.get("ctr").version == 1
    assert isinstance(store.get("ctr", 1), Snapshot)


def test_notices_of_new_versions_and_registry_changes(backend: Backend) -> None:
    store, got, listening, stop = backend.store, [], threading.Event(), threading.Event()

    def follow() -> None:
        for notice in store.notices(wait_s=0.1):
            if notice == "":
                listening.set()
            elif notice is not None:
                got.append(notice)
            if stop.is_set():
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        assert listening.wait(10), "the store never said it was listening"
        put(store)
        put(store)
        wait_until(lambda: "ctr:2" in got, "a notice of version 2")
        Registry(store).promote("ctr", 1)
        wait_until(lambda: "ctr:registry" in got, "a notice of the registry change")
    finally:
        stop.set()
        thread.join(10)
    versions = [n for n in got if n != "ctr:registry"]
    assert versions == ["ctr:1", "ctr:2"] if backend.pushes else versions[-1] == "ctr:2"


def test_a_backend_failure_is_a_streamlearn_error(infra: Infra, tmp_path: Path) -> None:
    """Redis refusing connections, an S3 endpoint nobody serves: StoreUnavailable from every
    call, never RedisError or obstore's errors."""
    dead_redis = RedisSnapshotStore.from_url(f"redis://127.0.0.1:{free_port()}/0", KEY, "x.")
    dead_s3 = ObjectSnapshotStore(
        "s3://snapshots/x",
        KEY,
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
        client_options={"allow_http": True},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
    )
    for store in (dead_redis, dead_s3):
        calls: list[Callable[[SnapshotStore], object]] = [
            lambda s: s.models(),
            lambda s: s.latest_version("ctr"),
            lambda s: s.get("ctr", 1),
            lambda s: s.put(trained(1)),
            lambda s: s.read_registry("ctr"),
            lambda s: Registry(s).rollback("ctr"),
            lambda s: s.delete("ctr", 1),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                call(store)
    with pytest.raises(StoreUnavailable):
        next(dead_redis.notices())


def _worker(url: str, archive: str, prefix: str, alias: str, seed: int, seconds: float) -> list:
    """Promote, roll back and pin in a tight loop for ``seconds``; the operations that reported
    success, in the order they did."""
    store = TieredSnapshotStore(
        RedisSnapshotStore.from_url(url, KEY, prefix), ObjectSnapshotStore(archive, KEY)
    )
    registry, rng, done = Registry(store), random.Random(seed), []
    mine = [v for v in range(1, 7) if v % 2 == seed % 2]  # pins: disjoint between workers
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        op = rng.choice(["promote", "promote", "rollback", "pin", "unpin"])
        try:
            if op == "promote":
                version = rng.randint(1, 6)
                registry.promote("ctr", version, alias)
            elif op == "rollback":
                version = registry.rollback("ctr", alias)
            else:
                version = rng.choice(mine)
                registry.pin("ctr", version, pinned=op == "pin")
        except SnapshotError:
            continue  # nothing to roll back to: reported as a failure, not done
        done.append((op, version))
    return done


def test_concurrent_writers_lose_nothing(infra: Infra, tmp_path: Path) -> None:
    """Two processes change one model's registry as fast as they can, each its own alias and
    pins: the document they leave is exactly what replaying each one's successful operations
    gives, in Redis and in the archive."""
    prefix, archive = f"t{uuid.uuid4().hex[:8]}.", f"file://{tmp_path}/archive"
    setup = TieredSnapshotStore(
        RedisSnapshotStore.from_url(infra.redis_url, KEY, prefix), ObjectSnapshotStore(archive, KEY)
    )
    for _ in range(6):
        put(setup)
    aliases = ["champion", "canary"]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        runs = pool.starmap(
            _worker, [(infra.redis_url, archive, prefix, a, i, 4.0) for i, a in enumerate(aliases)]
        )
    expected, changes = RegistryDocument(), 0
    for alias, run in zip(aliases, runs, strict=True):
        assert len(run) > 50, f"{alias}: too few operations to race ({len(run)})"
        for op, version in run:
            before = expected
            if op == "promote":
                expected = expected.promoted(alias, version)
            elif op == "rollback":
                expected = expected.rolled_back(alias)
                assert expected.aliases[alias] == version
            else:
                expected = expected.pinned(version, pinned=op == "pin")
            changes += expected != before
    stored = setup.read_registry("ctr")
    kept = {"revision", "moves"}
    assert stored.model_dump(exclude=kept) == expected.model_dump(exclude=kept)
    assert stored.revision == changes  # one revision per change: none lost, none doubled
    # Each change journaled in the same write (the newest MOVES_KEPT of them).
    assert len(stored.moves) == min(changes, MOVES_KEPT)
    assert setup.archive.read_registry("ctr") == stored


def test_a_chain_of_deltas_loads_as_the_whole_model(backend: Backend) -> None:
    t = delta_training(ModelSpec(), full_every=4)
    made = checkpoint_rounds(t, backend.store, rounds=1, per_round=6000)
    made += checkpoint_rounds(t, backend.store, rounds=5, per_round=200)
    assert [s.delta_of for s, _ in made] == [None, 1, 2, 3, None, 5]
    for snapshot, whole in made:
        loaded = backend.store.get("ctr", snapshot.version)
        assert fingerprint(loaded.model) == whole and loaded.offsets == snapshot.offsets
        assert backend.store.meta("ctr", snapshot.version)["delta_of"] == snapshot.delta_of
    # A link altered in the store: the chain through it is refused, before any unpickling.
    backend.overwrite("ctr", 2, made[0][0].sign(b"another key"))
    with pytest.raises(SignatureError):
        backend.store.get("ctr", 4)
    assert fingerprint(backend.store.get("ctr", 6).model) == made[5][1]
