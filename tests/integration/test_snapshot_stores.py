"""One contract, every snapshot store: Redis, a local directory, S3 (a local S3-compatible
server, moto's, started here), and the tiered store the trainer uses (Redis + archive)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import obstore
import pytest
import redis
from moto.server import ThreadedMotoServer

from streamlearn.errors import SignatureError, SnapshotError, SnapshotNotFound, StoreUnavailable
from streamlearn.registry import Registry
from streamlearn.snapshots import RedisSnapshotStore, Snapshot, SnapshotStore
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.snapshots.tiered import TieredSnapshotStore
from tests.conftest import Infra, free_port
from tests.unit.test_api import trained

pytestmark = pytest.mark.integration

KEY = b"contract-key"


@dataclass
class Backend:
    store: SnapshotStore
    # Replace the stored bytes of a version, as an attacker with write access would.
    overwrite: Callable[[str, int, bytes], None]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds).create_bucket(
        Bucket="snapshots"
    )
    yield {
        "endpoint": endpoint,
        "access_key_id": "test",
        "secret_access_key": "test",
        "region": "us-east-1",
        "client_options": {"allow_http": True},
    }
    server.stop()


def _redis(infra: Infra) -> tuple[RedisSnapshotStore, Callable[[str, int, bytes], None]]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    store = RedisSnapshotStore.from_url(infra.redis_url, KEY, prefix)
    client = redis.Redis.from_url(infra.redis_url)
    return store, lambda m, v, blob: client.set(f"{prefix}snap:{m}:{v}", blob) and None


def _objects(url: str, **options: Any) -> tuple[ObjectSnapshotStore, Any]:
    store = ObjectSnapshotStore(url, KEY, **options)
    raw = store._store

    def overwrite(m: str, v: int, blob: bytes) -> None:
        obstore.put(raw, store._path(m, v), blob)

    return store, overwrite


@pytest.fixture(params=["redis", "directory", "s3", "tiered"])
def backend(
    request: pytest.FixtureRequest, infra: Infra, tmp_path: Path, s3: dict[str, Any]
) -> Backend:
    if request.param == "redis":
        return Backend(*_redis(infra))
    if request.param == "directory":
        return Backend(*_objects(f"file://{tmp_path}/archive"))
    if request.param == "s3":
        return Backend(*_objects(f"s3://snapshots/{uuid.uuid4().hex[:8]}", **s3))
    hot, _ = _redis(infra)
    archive, overwrite = _objects(f"file://{tmp_path}/archive")
    # Tampering with the archive alone must be caught too: reads of the hot copy are tested
    # under "redis".
    hot_client = redis.Redis.from_url(infra.redis_url)

    def both(m: str, v: int, blob: bytes) -> None:
        overwrite(m, v, blob)
        hot_client.delete(f"{hot._p}snap:{m}:{v}")

    return Backend(TieredSnapshotStore(hot, archive), both)


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
    with pytest.raises(SignatureError):
        backend.store.meta("ctr", 1)


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
    assert reg.retain("ctr", keep_last=1) == [3, 4]
    listed = {m["version"]: (m["aliases"], m["pinned"]) for m in reg.versions("ctr")}
    assert listed == {1: ([], True), 2: (["champion"], False), 5: ([], False)}
    assert versions == [1, 2, 3, 4, 5] and backend.store.latest_version("ctr") == 5


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
