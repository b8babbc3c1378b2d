"""The HTTP contract, with a snapshot store on a local directory (Redis: integration tests)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app, served
from streamlearn.archive_query import connect
from streamlearn.errors import SignatureError
from streamlearn.evaluation import evaluate
from streamlearn.explaining import moved, weights
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.serving import ModelHolder, ScoreRequest
from streamlearn.settings import Settings
from streamlearn.snapshots import ObjectSnapshotStore
from tests.factories import RANK, RecordingPublisher, archive_of_examples, trained


def app_client(
    store: ObjectSnapshotStore, publisher: RecordingPublisher, **settings: Any
) -> TestClient:
    config = Settings(**{"max_candidates": 3, "model_poll_s": 3600, **settings})
    return TestClient(served(create_app(config, store=store, publisher=publisher)))


@pytest.fixture
def client(store: ObjectSnapshotStore, publisher: RecordingPublisher) -> Iterator[TestClient]:
    with app_client(store, publisher) as c:
        yield c


BODY = {
    "user_id": "u1",
    "context": {"segment": "likes"},
    "items": [{"item_id": "i", "features": {"category": "b"}}],
}


def test_no_model_yet_is_503_and_health_says_so(client: TestClient) -> None:
    assert client.post("/v1/score", json=BODY).status_code == 503
    assert client.get("/healthz").json() == {
        "status": "ok",
        "model": "ctr",
        "model_version": None,
        "served_as": "ctr",
        "worker": os.getpid(),
        "offsets": {},
    }


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
    health = client.get("/healthz").json()
    # What it has learned: the 100 examples below offset 100 of partition 0.
    assert (health["model_version"], health["offsets"]) == (2, {"0": 100})


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


def serving(client: TestClient, store: ObjectSnapshotStore, version: int = 1) -> ModelHolder:
    store.put(trained(version))
    holder: ModelHolder = client.app.state.holder  # type: ignore[attr-defined]
    holder.refresh()
    return holder


def test_rank_returns_the_top_k_and_logs_exactly_what_it_served(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    serving(client, store)
    r = client.post("/v1/rank", json={**RANK, "epsilon": 0})  # no exploration: the top k
    assert r.status_code == 200, r.text
    body = r.json()
    unranked = {k: v for k, v in RANK.items() if k != "k"}
    scored = client.post("/v1/score", json=unranked).json()["scores"]
    scores = {s["item_id"]: s["probability"] for s in scored}
    best = sorted(scores, key=lambda i: -scores[i])[:2]
    assert [i["item_id"] for i in body["items"]] == best
    assert [i["position"] for i in body["items"]] == [0, 1]
    assert all(i["propensity"] == 1.0 for i in body["items"])
    assert body["model_version"] == 1 and body["logged"] is True
    [(topic, key, event)] = publisher.events
    assert topic.endswith("recommendations") and key == "u1"
    assert event["recommendation_id"] == body["recommendation_id"]
    assert event["model_version"] == "ctr:v1"
    assert event["context"] == RANK["context"]
    # What an off-policy estimate replays: the exploration, and every candidate in order.
    assert event["epsilon"] == 0
    assert event["candidates"] == [c["item_id"] for c in RANK["items"]]
    served = {i["item_id"]: i for i in event["items"]}
    for item in body["items"]:
        logged = served[item["item_id"]]
        assert logged["score"] == item["score"] == scores[item["item_id"]]
        assert logged["position"] == item["position"]
        assert logged["propensity"] == item["propensity"]
    request_features = {c["item_id"]: c["features"] for c in RANK["items"]}
    assert all(i["features"] == request_features[i["item_id"]] for i in event["items"])


def test_explain_gives_each_items_contributions_summing_to_its_logit(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    serving(client, store)
    unranked = {k: v for k, v in RANK.items() if k != "k"}
    plain = client.post("/v1/score", json=unranked).json()["scores"]
    assert all("explanation" not in s for s in plain)  # only when asked
    scored = client.post("/v1/score", json={**unranked, "explain": True}).json()["scores"]
    for s in scored:
        why = s["explanation"]
        assert why["link"] == "logit"
        total = why["bias"] + sum(c["contribution"] for c in why["contributions"])
        assert total == pytest.approx(why["score"], abs=1e-12)
        assert 1 / (1 + math.exp(-why["score"])) == pytest.approx(s["probability"], rel=1e-12)
        sizes = [abs(c["contribution"]) for c in why["contributions"]]
        assert sizes == sorted(sizes, reverse=True)
        assert f"item_{s['item_id']}" in {c["feature"] for c in why["contributions"]}
    assert [s["probability"] for s in scored] == [s["probability"] for s in plain]

    ranked = client.post("/v1/rank", json={**RANK, "explain": True, "epsilon": 0}).json()
    by_item = {s["item_id"]: s["explanation"] for s in scored}
    assert [i["explanation"] for i in ranked["items"]] == [
        by_item[i["item_id"]] for i in ranked["items"]
    ]
    [(_, _, event)] = publisher.events
    assert all("explanation" not in i for i in event["items"])  # not logged


def test_rank_with_exploration_logs_the_true_propensities(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    serving(client, store)
    for _ in range(30):
        body = client.post("/v1/rank", json={**RANK, "k": 3, "epsilon": 0.5}).json()
        props = [i["propensity"] for i in body["items"]]
        # Position j chooses among 3 - j candidates: the best with (1 - e) + e / m, others e / m.
        for j, p in enumerate(props):
            m = 3 - j
            assert p == pytest.approx(0.5 / m) or p == pytest.approx(0.5 + 0.5 / m)
    assert len(publisher.events) == 30


def test_rank_explores_by_default_and_logs_how_much(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    """Without ``epsilon`` a request gets the setting's (5% by default); the event says so."""
    serving(client, store)
    for _ in range(20):
        body = client.post("/v1/rank", json=RANK).json()
        m = len(RANK["items"])  # type: ignore[arg-type]
        assert body["items"][0]["propensity"] in (
            pytest.approx(0.95 + 0.05 / m),
            pytest.approx(0.05 / m),
        )
    assert {e["epsilon"] for _, _, e in publisher.events} == {0.05}


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_rank_logs_every_models_scores_of_every_candidate(
    store: ObjectSnapshotStore, publisher: RecordingPublisher, share: float
) -> None:
    """With a challenger configured, each ranked request (SHADOW_SHARE of them) logs the served
    model's and the challenger's scores of all candidates, in their order: the challenger's are
    its own, though only the served model ranks."""
    store.put(trained(1))
    challenger = ModelSpec(name="ctr-b", crosses=())
    store.put(trained(3, spec=challenger))
    with app_client(
        store, publisher, challengers=[challenger.model_dump()], shadow_share=share
    ) as c:
        body = c.post("/v1/rank", json=RANK).json()
        unranked = {k: v for k, v in RANK.items() if k != "k"}
        served = [s["probability"] for s in c.post("/v1/score", json=unranked).json()["scores"]]
    [(_, _, event)] = publisher.events
    if not share:
        assert event["scores"] is None
        return
    holder = ModelHolder(store, "ctr-b")
    holder.refresh()
    assert holder.current is not None
    own = holder.current.score_request(ScoreRequest.model_validate(unranked))
    assert event["scores"] == {
        "ctr:v1": [round(p, 6) for p in served],
        "ctr-b:v3": [round(p, 6) for p in own],
    }
    assert own != served and body["model_version"] == 1


def test_rank_says_when_its_event_was_not_logged(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    serving(client, store)
    publisher.accepting = False  # the buffer is full
    r = client.post("/v1/rank", json=RANK)
    assert r.status_code == 200 and r.json()["logged"] is False


@pytest.mark.parametrize(
    "change",
    [
        {"k": 0},
        {"epsilon": 1.5},
        {"items": [{"item_id": "a"}, {"item_id": "a"}]},
        {"items": [{"item_id": f"i{n}"} for n in range(4)]},
    ],
)
def test_bad_rank_requests_are_422(
    client: TestClient, store: ObjectSnapshotStore, change: dict[str, Any]
) -> None:
    serving(client, store)
    assert client.post("/v1/rank", json={**RANK, **change}).status_code == 422


OUTCOME = {
    "recommendation_id": "r1",
    "user_id": "u1",
    "item_id": "a",
    "kind": "click",
    "event_time": 1700000000.0,
}


def test_outcomes_one_or_a_batch_are_published(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    r = client.post("/v1/outcomes", json=OUTCOME)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "logged": 1}
    r = client.post("/v1/outcomes", json=[OUTCOME, {**OUTCOME, "kind": "purchase", "value": 5}])
    assert r.status_code == 202 and r.json() == {"accepted": 2, "logged": 2}
    assert [e[2]["kind"] for e in publisher.events] == ["click", "click", "purchase"]
    assert all(t.endswith("outcomes") and k == "u1" for t, k, _ in publisher.events)


@pytest.mark.parametrize(
    "bad",
    [
        {**OUTCOME, "kind": "view"},
        {**OUTCOME, "value": -1},
        {**OUTCOME, "surprise": 1},
        [],
        [OUTCOME] * 1001,
    ],
)
def test_bad_outcomes_are_422_and_nothing_is_published(
    client: TestClient, publisher: RecordingPublisher, bad: Any
) -> None:
    assert client.post("/v1/outcomes", json=bad).status_code == 422
    assert publisher.events == []


def test_scoring_keys_when_configured(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher, scoring_keys=["k1", "k2"], admin_key="adm") as c:
        serving(c, store)
        assert c.post("/v1/score", json=BODY).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert c.post("/v1/score", json=BODY, headers=bad).status_code == 403
        assert c.post("/v1/score", json=BODY, headers={"X-API-Key": "adm"}).status_code == 403
        assert c.post("/v1/score", json=BODY, headers={"X-API-Key": "k2"}).status_code == 200
        ok = {"Authorization": "Bearer k1"}
        assert c.post("/v1/rank", json=RANK, headers=ok).status_code == 200
        assert c.post("/v1/outcomes", json=OUTCOME, headers=ok).status_code == 202
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_admin_needs_the_admin_key_and_is_off_without_one(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    assert client.get("/v1/models", headers={"X-API-Key": "anything"}).status_code == 403
    with app_client(store, publisher, admin_key="adm", scoring_keys=["k1"]) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 403
        assert c.get("/v1/models", headers={"X-API-Key": "adm"}).status_code == 200


def test_admin_promote_rollback_pin_over_http(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    admin = {"X-API-Key": "adm"}
    with app_client(store, publisher, admin_key="adm") as c:
        serving(c, store, 1)
        serving(c, store, 2)
        [model] = c.get("/v1/models", headers=admin).json()
        assert model["model"] == "ctr" and [v["version"] for v in model["versions"]] == [1, 2]
        assert "roc_auc" in model["versions"][0]["metrics"]
        r = c.post("/v1/models/ctr/promote", json={"version": 1}, headers=admin)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert c.post("/v1/score", json=BODY).json()["model_version"] == 1  # at once
        c.post("/v1/models/ctr/promote", json={"version": 2}, headers=admin)
        assert c.post("/v1/score", json=BODY).json()["model_version"] == 2
        r = c.post("/v1/models/ctr/rollback", headers=admin)
        assert r.json()["version"] == 1
        assert c.post("/v1/score", json=BODY).json()["model_version"] == 1
        assert c.get("/v1/models/ctr/versions/champion", headers=admin).json()["version"] == 1
        r = c.post("/v1/models/ctr/pin", json={"version": 2}, headers=admin)
        assert r.json()["pinned"] == [2]
        r = c.post("/v1/models/ctr/unpin", json={"version": 2}, headers=admin)
        assert r.json()["pinned"] == []
        # Clear 4xx for what cannot be done.
        assert (
            c.post("/v1/models/ctr/promote", json={"version": 9}, headers=admin).status_code == 404
        )
        assert c.post("/v1/models/ctr/rollback", headers=admin).status_code == 409
        assert c.get("/v1/models/ctr/versions/nope", headers=admin).status_code == 404
        # A digit to str.isdigit that int() refuses (the fuzz test found it): no 500.
        assert c.get("/v1/models/ctr/versions/%C2%B2", headers=admin).status_code == 404
        assert c.get("/v1/models/..%2Fetc", headers=admin).status_code in (404, 422)


def test_oversized_bodies_are_413_whether_announced_or_streamed(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher, max_body_bytes=2048) as c:
        serving(c, store)
        big = b'{"user_id": "u1", "items": [{"item_id": "' + b"x" * 4000 + b'"}]}'
        r = c.post("/v1/score", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield big[:1500]
            yield big[1500:]

        r = c.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/score", json=BODY).status_code == 200


def test_readiness_needs_a_model_and_kafka(
    client: TestClient, store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    serving(client, store)
    assert client.get("/readyz").status_code == 200
    publisher.connected = False
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["kafka_connected"] is False


def test_metrics_count_requests_by_route_and_status_and_name_the_version(
    client: TestClient, store: ObjectSnapshotStore
) -> None:
    serving(client, store, 1)
    serving(client, store, 2)

    def count(text: str, route: str, status: int) -> float:
        line = f'streamlearn_api_requests_total{{route="{route}",status="{status}"}} '
        found = [ln for ln in text.splitlines() if ln.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    before = client.get("/metrics").text
    client.post("/v1/score", json=BODY)
    client.post("/v1/score", json={"nope": 1})
    after = client.get("/metrics").text
    assert count(after, "/v1/score", 200) == count(before, "/v1/score", 200) + 1
    assert count(after, "/v1/score", 422) == count(before, "/v1/score", 422) + 1
    assert 'streamlearn_api_model_version{model="ctr"} 2.0' in after
    assert 'streamlearn_api_model_swaps_total{model="ctr"} 2.0' in after
    assert "streamlearn_api_request_seconds_bucket" in after


class MonitorRedis:
    """What /v1/monitor reads from Redis: the latest figures and the history stream."""

    def __init__(self, current: dict[str, Any] | None, points: int) -> None:
        self.current = current
        self.entries = [
            (f"{i}-0".encode(), {b"point": json.dumps({"at": i, "versions": {}}).encode()})
            for i in range(points)
        ]

    def get(self, key: str) -> bytes | None:
        assert key.endswith("monitor")
        return None if self.current is None else json.dumps(self.current).encode()

    def xrange(self, key: str, start: str, end: str) -> list[Any]:
        assert key.endswith("monitor-history") and end == "+"
        return self.entries

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        assert key.endswith("alerts-recent")
        return [b'{"status": "resolved"}'] if self.current else []


def test_the_dashboard_page_and_the_figures_it_polls(
    client: TestClient, store: ObjectSnapshotStore
) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/monitor" in page.text and "promote" in page.text
    client.app.state.redis = MonitorRedis(None, 0)  # type: ignore[attr-defined]
    empty = client.get("/v1/monitor").json()
    assert empty["current"] is None and empty["history"] == []
    serving(client, store, 3)
    client.app.state.redis = MonitorRedis({"firing": ["ctr/auc-floor/5m"]}, 1000)  # type: ignore[attr-defined]
    got = client.get("/v1/monitor", params={"points": 100}).json()
    assert got["current"]["firing"] == ["ctr/auc-floor/5m"]
    assert len(got["history"]) == 100 and got["history"][1]["at"] == 10  # evenly thinned
    assert got["served"] == {"name": "ctr", "model": "ctr", "version": 3, "swaps": 1}
    assert got["recent_alerts"] == [{"status": "resolved"}]
    assert got["api_requests_total"] >= 2  # this test's two earlier requests (its page, a poll)
    assert client.get("/v1/monitor", params={"points": 1}).status_code == 422


def test_the_monitor_figures_carry_the_registry_moves_and_checkpoints_to_mark(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    """What the dashboard marks on its time axes besides alarms: the promotions and rollbacks
    (any client's: the registry journals them) and the served model's checkpoints."""
    admin = {"X-API-Key": "adm"}
    with app_client(store, publisher, admin_key="adm") as c:
        c.app.state.redis = MonitorRedis({"firing": []}, 3)  # type: ignore[attr-defined]
        old = dataclasses.replace(trained(1), created_at=time.time() - 86_400)  # a day ago
        store.put(old)
        for v in (2, 3):
            store.put(dataclasses.replace(trained(v), created_at=time.time()))
        before = time.time()
        assert c.post("/v1/models/ctr/promote", json={"version": 2}, headers=admin).is_success
        assert c.post("/v1/models/ctr/promote", json={"version": 3}, headers=admin).is_success
        assert c.post("/v1/models/ctr/rollback", headers=admin).is_success
        got = c.get("/v1/monitor", params={"minutes": 60}).json()
        assert [(m["kind"], m["version"]) for m in got["moves"]] == [
            ("promote", 2),
            ("promote", 3),
            ("rollback", 2),
        ]
        assert all(m["at"] >= before and m["registry"] == "ctr" for m in got["moves"])
        assert [(cp["model"], cp["version"]) for cp in got["checkpoints"]] == [
            ("ctr", 2),
            ("ctr", 3),
        ]
        summary = c.get("/v1/models/ctr", headers=admin).json()
        assert [m["kind"] for m in summary["moves"]] == ["promote", "promote", "rollback"]


def test_a_versions_largest_weights_and_two_versions_compared(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    admin = {"X-API-Key": "adm"}
    store.put(trained(1, n=5))
    store.put(trained(2, n=200))
    with app_client(store, publisher, admin_key="adm") as c:
        Registry(store).promote("ctr", 2)
        top = c.get("/v1/models/ctr/weights", params={"top": 3}, headers=admin).json()
        own = weights(store.get("ctr", 2).model)
        assert top["version"] == 2 and top["bias"] == own.bias
        assert [(w["feature"], w["weight"]) for w in top["weights"]] == own.largest(3)
        assert abs(top["weights"][0]["weight"]) >= abs(top["weights"][-1]["weight"])
        assert top["features"] == len(own.by_feature) > 3

        got = c.get(
            "/v1/models/ctr/compare", params={"a": 1, "b": "champion", "top": 4}, headers=admin
        ).json()
        assert (got["a"]["version"], got["b"]["version"]) == (1, 2)
        assert (got["a"]["samples_seen"], got["b"]["samples_seen"]) == (10, 400)
        first = weights(store.get("ctr", 1).model)
        want = moved(first, own, 4)
        assert [(m["feature"], m["a"], m["b"]) for m in got["moved"]] == want
        changes = [abs(m["change"]) for m in got["moved"]]
        assert changes == sorted(changes, reverse=True) and changes[0] > 0
        assert (
            c.get("/v1/models/ctr/compare", params={"a": 1, "b": 9}, headers=admin).status_code
            == 404
        )
        assert (
            c.get("/v1/models/ctr/compare", params={"a": 1, "b": "nope"}, headers=admin).status_code
            == 404
        )
        assert c.get("/v1/models/ctr/weights").status_code == 401
        page = c.get("/models/ctr")
        assert page.status_code == 200 and "/v1/models/" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]


# Interpolations in the dashboard's script that need no escaping: numbers, constants, HTML
# already escaped, or text set through textContent. Any other must go through esc().
SAFE_IN_PAGE = {
    "role", "recent", "model",
    "Number(v.metrics.served_roc_auc ?? v.metrics.roc_auc ?? NaN).toFixed(3)",
    'a.status === "firing" ? "firing" : "muted"', 'v.pinned ? " pinned" : ""',
    "new Date(a.at * 1000).toLocaleTimeString()",
    "new Date(m.current.at * 1000).toLocaleTimeString()",
    "encodeURIComponent(name)", "encodeURIComponent(served.served_as)",
    # Into textContent, a title or a style value, or a URL component (the DOM escapes them):
    "m.served.model", 'm.served.version ?? "\u2013"', "e.message", "r.status",
    "(100 * newest.share).toFixed(1)", "newest.final", "newest.impressions",
    "current.provisional_examples", "current.delayed_positive_examples",
    "b.dataset.model", "b.dataset.version", "encodeURIComponent(served.model)",
    "new Date(m.at * 1000).toLocaleString()", "m.title", "row * 13",
    "a.status", "a.dedup_key", "a.summary", "moved[v.kind]", "what", "v.version",
    "v.registry", 'v.alias ? v.alias + " → " : ""', "c.model", "c.version",
    # The model page: into textContent or a URL component, constants, bars' widths and classes,
    # HTML its own esc() built (the lineage's cells, the aliases, a bar):
    "base", "encodeURIComponent(picked.a)", "encodeURIComponent(picked.b)",
    "encodeURIComponent(version)", "c.a.version", "c.b.version", "w.version", "w.features",
    "fmt(w.bias)", "b.textContent", 'b.dataset.pinned === "1" ? "unpin" : "pin"',
    "Math.round(60 * Math.abs(x) / (scale || 1))", 'x >= 0 ? "up" : "down"',
    "bar(m.change, scale)", "bar(x.weight, scale)", "aliases", "offsets",
    'servedHere ? " <span class=\'muted\'>(served)</span>" : ""', 'servedHere ? "served" : ""',
    'v.delta_of ? ` <span class="muted">(delta of v${esc(v.delta_of)})</span>` : ""',
    'v.parent_version ? "v" + esc(v.parent_version) : "\u2013"',
    'm.version ? "v" + esc(m.version) : esc(m.model || "")',
    'v.pinned ? "unpin" : "pin"', "v.pinned ? 1 : 0",
    'v.version === picked.a ? "checked" : ""', 'v.version === picked.b ? "checked" : ""',
}  # fmt: skip


def _interpolations(script: str) -> list[str]:
    found, i = [], 0
    while (start := script.find("${", i)) >= 0:
        depth, end = 0, start + 1
        while end < len(script):
            depth += {"{": 1, "}": -1}.get(script[end], 0)
            if depth == 0:
                break
            end += 1
        found.append(script[start + 2 : end])
        i = end
    return found


@pytest.mark.parametrize("path", ["/dashboard", "/models/ctr"])
def test_the_pages_escape_what_they_show_and_run_only_their_own_script(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    script = page.text.split("<script>", 1)[1].split("</script>", 1)[0]
    unescaped = {e for e in _interpolations(script) if not e.startswith("esc(")} - SAFE_IN_PAGE
    assert unescaped == set(), "data written into the page without esc()"
    assert "localStorage" not in script  # the admin key lives as long as the tab
    policy = page.headers["content-security-policy"]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy and "default-src 'none'" in policy
    if path != "/dashboard":
        assert "<script src" not in page.text
        return
    # The charting library comes from the API itself (make vendor), not from another origin.
    assert re.findall(r'<script src="([^"]+)"', page.text) == ["/vendor/uplot/uPlot.iife.min.js"]
    library = client.get("/vendor/uplot/uPlot.iife.min.js")
    assert library.status_code == 200 and "javascript" in library.headers["content-type"]
    assert "var uPlot=" in library.text
    # The copy is the version web/package-lock.json pins (make vendor refreshes both).
    lock = json.loads((Path(__file__).parents[2] / "web" / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/uplot"]["version"]
    assert library.text.startswith(f"/*! https://github.com/leeoniya/uPlot (v{pinned}) */")
    assert client.get("/vendor/uplot/LICENSE").text.startswith("The MIT License")


def test_version_listings_page_and_keep_the_named_ones(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    admin = {"X-API-Key": "adm"}
    with app_client(store, publisher, admin_key="adm") as c:
        for v in range(1, 8):
            serving(c, store, v)
        c.post("/v1/models/ctr/promote", json={"version": 2}, headers=admin)
        c.post("/v1/models/ctr/pin", json={"version": 1}, headers=admin)
        [model] = c.get("/v1/models", params={"limit": 2}, headers=admin).json()
        assert [v["version"] for v in model["versions"]] == [1, 2, 6, 7]
        assert model["versions"][1]["aliases"] == ["champion"] and model["versions"][0]["pinned"]
        pages, before = [], None
        while True:
            params = {"limit": 3} | ({"before": before} if before else {})
            page = c.get("/v1/models/ctr/versions", params=params, headers=admin).json()
            pages.append([v["version"] for v in page["versions"]])
            before = page["next_before"]
            if before is None:
                break
        assert pages == [[5, 6, 7], [2, 3, 4], [1]]
        assert (
            c.get("/v1/models/ctr/versions", params={"limit": 0}, headers=admin).status_code == 422
        )


def test_admin_evaluation_gives_the_commands_figures(
    store: ObjectSnapshotStore, publisher: RecordingPublisher, tmp_path: Path
) -> None:
    config = Settings(archive_url=f"file://{tmp_path}/archive", topic_prefix="")
    archive_of_examples(Path(config.store_url.removeprefix("file://")))
    for version in (1, 2):
        store.put(trained(version, n=50 * version))
    admin = {"X-API-Key": "adm"}
    period = {"from": "2025-11-29", "to": "2025-11-30"}
    with app_client(
        store, publisher, admin_key="adm", archive_url=config.archive_url, topic_prefix=""
    ) as c:
        url = "/v1/models/ctr/evaluation"
        r = c.get(url, params={**period, "version": ["1", "2"]}, headers=admin)
        assert r.status_code == 200, r.text
        direct = evaluate(
            connect(config.store_url),
            "ctr",
            {v: store.get("ctr", v).model for v in (1, 2)},
            dt.date(2025, 11, 29),
            dt.date(2025, 11, 30),
        )
        assert r.json() == json.loads(json.dumps(direct.as_json()))
        assert set(r.json()["days"]) == {"2025-11-29", "2025-11-30"}

        backwards = {"from": "2025-11-30", "to": "2025-11-29", "version": "1"}
        assert c.get(url, params=backwards, headers=admin).status_code == 400
        unknown = c.get(url, params={**period, "version": "9"}, headers=admin)
        assert unknown.status_code == 404 and "no version" in unknown.json()["detail"]
        empty = {"from": "2024-01-01", "to": "2024-01-02", "version": "1"}
        assert c.get(url, params=empty, headers=admin).status_code == 404
        bad = c.get(url, params={**period, "from": "yesterday", "version": "1"}, headers=admin)
        assert 400 <= bad.status_code < 500
        assert c.get(url, params={**period, "version": "1"}).status_code == 401


def test_a_challenger_promoted_across_names_is_served_and_the_champion_scores_in_shadow(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    """POST /v1/models/ctr/promote {"model": "ctr-b"} serves ctr-b's newest version under the
    name ctr: rank answers with it and logs it as served, ctr's own champion scores in shadow;
    a rollback serves ctr again; a promotion of ctr's own version does too."""
    store.put(trained(1))
    store.put(trained(2))
    challenger = ModelSpec(name="ctr-b", crosses=())
    store.put(trained(3, spec=challenger))
    admin = {"X-API-Key": "adm"}
    with app_client(store, publisher, challengers=[challenger.model_dump()], admin_key="adm") as c:
        moved = c.post("/v1/models/ctr/promote", json={"model": "ctr-b"}, headers=admin)
        assert moved.status_code == 200, moved.text
        assert moved.json() == {
            "model": "ctr",
            "alias": "champion",
            "version": 3,
            "serves": "ctr-b",
        }
        body = c.post("/v1/rank", json=RANK).json()
        assert (body["model"], body["model_version"]) == ("ctr-b", 3)
        health = c.get("/healthz").json()
        assert (health["model"], health["model_version"], health["served_as"]) == (
            "ctr-b",
            3,
            "ctr",
        )
        summary = c.get("/v1/models/ctr", headers=admin).json()
        assert summary["serves"] == "ctr-b"
        back = c.post("/v1/models/ctr/rollback", headers=admin).json()
        assert (back["serves"], back["version"]) == ("ctr", 2)
        assert c.post("/v1/rank", json=RANK).json()["model"] == "ctr"
        c.post("/v1/models/ctr/promote", json={"model": "ctr-b", "version": 3}, headers=admin)
        own = c.post("/v1/models/ctr/promote", json={"version": 1}, headers=admin).json()
        assert (own["serves"], own["version"]) == ("ctr", 1)
        bad = c.post("/v1/models/ctr/promote", json={}, headers=admin)
        own = c.post("/v1/models/ctr/promote", json={"model": "ctr"}, headers=admin)
        missing = c.post("/v1/models/ctr/promote", json={"model": "nope"}, headers=admin)
    assert (bad.status_code, own.status_code, missing.status_code) == (422, 400, 404)
    first = publisher.events[0][2]
    assert first["model_version"] == "ctr-b:v3"
    assert set(first["scores"]) == {"ctr-b:v3", "ctr:v2"}  # the champion's own, in shadow
    assert set(publisher.events[1][2]["scores"]) == {"ctr:v2", "ctr-b:v3"}
