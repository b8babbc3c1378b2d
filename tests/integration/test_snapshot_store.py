"""What only the Redis store does: a notice on every new version (the contract every store
keeps is in test_snapshot_stores)."""

from __future__ import annotations

import uuid

import pytest
import redis

from streamlearn.errors import SnapshotNotFound
from streamlearn.snapshots import RedisSnapshotStore
from tests.conftest import Infra
from tests.unit.test_api import trained

pytestmark = pytest.mark.integration


@pytest.fixture
def store(infra: Infra) -> RedisSnapshotStore:
    return RedisSnapshotStore.from_url(infra.redis_url, b"key", f"t{uuid.uuid4().hex[:8]}.")


def test_versions_latest_and_notice(store: RedisSnapshotStore, infra: Infra) -> None:
    with pytest.raises(SnapshotNotFound):
        store.get("ctr")
    pubsub = redis.Redis.from_url(infra.redis_url).pubsub()
    pubsub.subscribe(store.channel)
    pubsub.get_message(timeout=5)  # the subscribe confirmation
    for _ in range(2):
        snap = trained(store.next_version("ctr"))
        store.put(snap)
    assert store.latest_version("ctr") == 2
    assert [m["version"] for m in store.versions("ctr")] == [1, 2]
    assert store.get("ctr", 1).version == 1 and store.get("ctr").version == 2
    notices = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [n["data"] for n in notices if n] == [b"ctr:1", b"ctr:2"]
    with pytest.raises(SnapshotNotFound):
        store.get("ctr", 3)
