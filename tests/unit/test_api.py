"""The HTTP contract, with a snapshot store on a local directory (Redis: integration tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from streamlearn.clock import ManualClock
from streamlearn.errors import SignatureError
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.serving import ModelHolder
from streamlearn.settings import Settings
from streamlearn.snapshots import ObjectSnapshotStore, Snapshot
from streamlearn.training import Training
from tests.unit.test_training import example


def trained(version: int, n: int = 50) -> Snapshot:
    t = Training(ModelSpec(), ManualClock(0.0), every_n=1000, every_s=60.0)
    for i in range(n):
        t.learn(example(True, "likes"), 0, 2 * i)
        t.learn(example(False, "dislikes"), 0, 2 * i + 1)
    return t.snapshot(version)


@pytest.fixture
def store(tmp_path: Path) -> ObjectSnapshotStore:
    """A real store on a local directory: the API reads it as it reads the archive."""
    return ObjectSnapshotStore(f"file://{tmp_path}", b"test-key")


@pytest.fixture
def client(store: ObjectSnapshotStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr("api.app.open_store", lambda settings: store)
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
    client: TestClient, store: ObjectSnapshotStore
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
def test_bad_bodies_get_422_never_500(
    client: TestClient, store: ObjectSnapshotStore, body: bytes
) -> None:
    store.put(trained(1))
    client.app.state.holder.refresh()  # type: ignore[attr-defined]
    r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_too_many_candidates_is_422(client: TestClient, store: ObjectSnapshotStore) -> None:
    store.put(trained(1))
    client.app.state.holder.refresh()  # type: ignore[attr-defined]
    many = {**BODY, "items": [{"item_id": f"i{n}"} for n in range(4)]}
    r = client.post("/v1/score", json=many)
    assert r.status_code == 422 and "at most 3" in r.text


def test_promote_rollback_and_a_tampered_version_in_the_served_model(
    client: TestClient, store: ObjectSnapshotStore, tmp_path: Path
) -> None:
    holder: ModelHolder = client.app.state.holder  # type: ignore[attr-defined]
    registry = Registry(store)
    for v in (1, 2):
        store.put(trained(v))
    assert holder.refresh() and holder.current and holder.current.version == 2
    registry.promote("ctr", 1)
    assert holder.refresh() and client.post("/v1/score", json=BODY).json()["model_version"] == 1
    registry.promote("ctr", 2)
    registry.rollback("ctr")
    assert not holder.refresh()  # back on 1, which it already serves

    store.put(trained(3))
    path = tmp_path / "ctr" / "v0000000003.sls"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x01
    path.write_bytes(bytes(blob))
    registry.promote("ctr", 2)
    holder.refresh()
    with pytest.raises(SignatureError):
        registry.promote("ctr", 3)  # refused: it does not verify
    assert client.post("/v1/score", json=BODY).json()["model_version"] == 2
