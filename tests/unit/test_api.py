"""The HTTP contract with an in-memory snapshot store (Redis is covered by integration tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from streamlearn.clock import ManualClock
from streamlearn.errors import SnapshotNotFound
from streamlearn.learning import ModelSpec
from streamlearn.serving import ModelHolder
from streamlearn.settings import Settings
from streamlearn.snapshots import Snapshot
from streamlearn.training import Training
from tests.unit.test_training import example


class MemoryStore:
    def __init__(self) -> None:
        self.blobs: dict[int, Snapshot] = {}

    def next_version(self, model_name: str) -> int:
        return len(self.blobs) + 1

    def put(self, snapshot: Snapshot) -> None:
        self.blobs[snapshot.version] = snapshot

    def latest_version(self, model_name: str) -> int | None:
        return max(self.blobs, default=None)

    def get(self, model_name: str, version: int | None = None) -> Snapshot:
        version = version or self.latest_version(model_name)
        if version not in self.blobs:
            raise SnapshotNotFound(model_name)
        return self.blobs[version]

    def meta(self, model_name: str, version: int | None = None) -> dict[str, Any]:
        return self.get(model_name, version).meta()

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        return [s.meta() for s in self.blobs.values()]


def trained(version: int, n: int = 50) -> Snapshot:
    t = Training(ModelSpec(), ManualClock(0.0), every_n=1000, every_s=60.0)
    for i in range(n):
        t.learn(example(True, "likes"), 0, 2 * i)
        t.learn(example(False, "dislikes"), 0, 2 * i + 1)
    return t.snapshot(version)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def client(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr("api.app.RedisSnapshotStore.from_url", lambda *a, **k: store)
    with TestClient(create_app(Settings(max_candidates=3, model_poll_s=3600))) as c:
        yield c


BODY = {
    "user_id": "u1",
    "context": {"segment": "likes"},
    "items": [{"item_id": "i", "features": {"category": "b"}}],
}


def test_no_model_yet_is_503_and_health_says_so(client: TestClient) -> None:
    assert client.post("/v1/score", json=BODY).status_code == 503
    assert client.get("/healthz").json() == {"status": "ok", "model": "ctr", "model_version": None}


def test_scores_name_the_version_and_follow_the_model(
    client: TestClient, store: MemoryStore
) -> None:
    store.put(trained(1))
    holder: ModelHolder = client.app.state.holder  # type: ignore[attr-defined]
    assert holder.refresh()
    liked = client.post("/v1/score", json=BODY).json()
    disliked = client.post("/v1/score", json={**BODY, "context": {"segment": "dislikes"}}).json()
    assert liked["model_version"] == 1
    assert liked["scores"][0]["item_id"] == "i"
    assert liked["scores"][0]["probability"] > 0.7 > 0.3 > disliked["scores"][0]["probability"]
    store.put(trained(2))
    assert holder.refresh() and not holder.refresh()
    assert client.post("/v1/score", json=BODY).json()["model_version"] == 2
    assert client.get("/healthz").json()["model_version"] == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id": "u1", "items": [{"item_id": "i", "features": {"p": NaN}}]}',
        b'{"user_id": "u1", "items": [{"item_id": "i", "features": {"p": Infinity}}]}',
        b'{"user_id": "u1", "items": []}',
        b'{"user_id": "u1", "items": [{"item_id": "i"}], "extra": 1}',
        b'{"user_id": 5, "items": [{"item_id": "i"}]}',
        b'{"items": [{"item_id": "i"}]}',
        b"not json",
        b"",
    ],
)
def test_bad_bodies_get_422_never_500(client: TestClient, store: MemoryStore, body: bytes) -> None:
    store.put(trained(1))
    client.app.state.holder.refresh()  # type: ignore[attr-defined]
    r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_too_many_candidates_is_422(client: TestClient, store: MemoryStore) -> None:
    store.put(trained(1))
    client.app.state.holder.refresh()  # type: ignore[attr-defined]
    many = {**BODY, "items": [{"item_id": f"i{n}"} for n in range(4)]}
    r = client.post("/v1/score", json=many)
    assert r.status_code == 422 and "at most 3" in r.text
