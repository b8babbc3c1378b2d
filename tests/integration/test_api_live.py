"""The API as its own process, on the real broker and Redis: what it serves reaches the topic,
promotions reach it through Redis, and it keeps answering with Redis or Kafka gone."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from streamlearn.errors import StoreUnavailable
from streamlearn.events import Recommendation
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from tests.conftest import PrivateRedis, Processes, configure, free_port, records, wait_until
from tests.factories import RANK, trained

pytestmark = pytest.mark.integration

ADMIN = {"X-API-Key": "test-admin-key"}


def start_api(
    processes: Processes,
    monkeypatch: pytest.MonkeyPatch,
    api_only: dict[str, str] | None = None,
    **extra: str,
) -> Settings:
    """The API process, configured with ``extra`` like the test, and with ``api_only`` too."""
    s = configure(
        processes,
        monkeypatch,
        **{
            "STREAMLEARN_ADMIN_KEY": ADMIN["X-API-Key"],
            # Unless a test says otherwise only the Redis notice can make it swap quickly.
            "STREAMLEARN_MODEL_POLL_S": "3600",
            **extra,
        },
    )
    processes.env.update(api_only or {})
    processes.start("api", "-m", "api")
    wait_until(lambda: _get(s, "/healthz") == 200, "the API to answer")
    return s


def url(s: Settings, path: str) -> str:
    return f"http://127.0.0.1:{s.api.port}{path}"


def _get(s: Settings, path: str) -> int:
    try:
        return httpx.get(url(s, path), timeout=2).status_code
    except httpx.HTTPError:
        return 0


def served_version(s: Settings) -> int | None:
    body = {k: v for k, v in RANK.items() if k != "k"}
    r = httpx.post(url(s, "/v1/score"), json=body, timeout=5)
    return int(r.json()["model_version"]) if r.status_code == 200 else None


def test_rank_publishes_what_it_served(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = start_api(processes, monkeypatch)
    open_store(s).put(trained(1))
    wait_until(lambda: _get(s, "/readyz") == 200, "a model loaded and Kafka connected")
    answers = [httpx.post(url(s, "/v1/rank"), json=RANK, timeout=5).json() for _ in range(3)]
    assert all(a["logged"] and a["model_version"] == 1 for a in answers)

    def logged() -> dict[str, Recommendation]:
        return {r.recommendation_id: r for r in records(s, "recommendations", Recommendation)}

    wait_until(lambda: len(logged()) == 3, "the three recommendation events on the topic")
    events = logged()
    for answer in answers:
        event = events[answer["recommendation_id"]]
        assert event.model_version == "ctr:v1" and event.user_id == RANK["user_id"]
        assert [(i.item_id, i.position, i.score, i.propensity) for i in event.items] == [
            (i["item_id"], i["position"], i["score"], i["propensity"]) for i in answer["items"]
        ]


def test_a_promotion_reaches_the_api_by_redis_notice_without_a_failed_request(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = start_api(processes, monkeypatch)
    store = open_store(s)
    store.put(trained(1))
    wait_until(lambda: served_version(s) == 1, "version 1 served")
    store.put(trained(2))
    wait_until(lambda: served_version(s) == 2, "the newest version served, on its notice")

    failures: list[Any] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                r = client.post(url(s, "/v1/rank"), json=RANK)
                if r.status_code != 200 or r.json()["model_version"] not in (1, 2):
                    failures.append((r.status_code, r.text))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        registry = Registry(store)  # as an operator's CLI would, from another process
        for version in (1, 2, 1):
            registry.promote("ctr", version)
            wait_until(lambda v=version: served_version(s) == v, f"version {version} served")
        registry.rollback("ctr")
        wait_until(lambda: served_version(s) == 2, "the rollback served")
    finally:
        stop.set()
        thread.join()
    assert failures == []
    metrics = httpx.get(url(s, "/metrics")).text
    assert 'streamlearn_api_model_version{model="ctr"} 2.0' in metrics


def test_two_workers_share_the_port_follow_the_registry_and_count_together(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = start_api(processes, monkeypatch, {"STREAMLEARN_API_WORKERS": "2"})
    store = open_store(s)
    store.put(trained(1))

    def health() -> dict[str, Any]:
        with httpx.Client(timeout=5) as fresh:  # a new connection: either worker may take it
            body: dict[str, Any] = fresh.get(url(s, "/healthz")).json()
            return body

    def every_worker_serves(version: int) -> bool:
        seen: dict[int, int | None] = {}
        for _ in range(40):
            answer = health()
            seen[answer["worker"]] = answer["model_version"]
        return len(seen) == 2 and set(seen.values()) == {version}

    wait_until(lambda: every_worker_serves(1), "both workers serving version 1")
    ranks = [httpx.post(url(s, "/v1/rank"), json=RANK, timeout=5) for _ in range(60)]
    assert all(r.status_code == 200 and r.json()["logged"] for r in ranks)
    store.put(trained(2))
    wait_until(lambda: every_worker_serves(2), "both workers serving the newest version")
    Registry(store).promote("ctr", 1)
    wait_until(lambda: every_worker_serves(1), "both workers serving the promoted version")
    # Every worker's requests counted in one /metrics, whichever worker answers it.
    total = 'streamlearn_api_requests_total{route="/v1/rank",status="200"} 60.0'
    assert all(total in httpx.get(url(s, "/metrics"), timeout=5).text for _ in range(10))
    wait_until(lambda: len(records(s, "recommendations", Recommendation)) == 60, "60 events")


def test_with_redis_down_the_api_keeps_serving(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    s = start_api(
        processes,
        monkeypatch,
        STREAMLEARN_REDIS_URL=private_redis.url,
        STREAMLEARN_MODEL_POLL_S="0.2",  # it keeps looking while Redis is gone
    )
    open_store(s).put(trained(1))
    wait_until(lambda: served_version(s) == 1, "version 1 served")
    private_redis.stop()
    wait_until(
        lambda: "notices unavailable (Redis did not answer" in processes.log("api"),
        "the API to notice Redis is gone",
    )
    for _ in range(20):  # over several polls of the store, which now falls back to the archive
        assert served_version(s) == 1
    assert httpx.post(url(s, "/v1/rank"), json=RANK).json()["model_version"] == 1
    # The admin API reads from the archive; a promotion, which must reach Redis, is a 503.
    listing = httpx.get(url(s, "/v1/models/ctr"), headers=ADMIN)
    assert [v["version"] for v in listing.json()["versions"]] == [1]
    promote = httpx.post(url(s, "/v1/models/ctr/promote"), json={"version": 1}, headers=ADMIN)
    assert promote.status_code == 503, promote.text
    private_redis.start()
    open_store(s).put(trained(2))  # Redis is empty now: this is its first version there
    wait_until(lambda: served_version(s) == 2, "the API to follow the store again")


def test_with_kafka_down_rank_answers_buffers_and_counts_the_loss(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = start_api(
        processes,
        monkeypatch,
        api_only={"STREAMLEARN_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"},  # no one there
        STREAMLEARN_API_BUFFER_MAX="3",
    )
    open_store(s).put(trained(1))
    wait_until(lambda: served_version(s) == 1, "version 1 served")
    answers = [httpx.post(url(s, "/v1/rank"), json=RANK, timeout=5) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json()["logged"] for a in answers] == [True] * 3 + [False] * 2
    ready = httpx.get(url(s, "/readyz"))
    assert ready.status_code == 503
    assert ready.json()["kafka_connected"] is False and ready.json()["events_buffered"] == 3
    metrics = httpx.get(url(s, "/metrics")).text
    lost = 'streamlearn_api_events_lost_total{reason="buffer_full",topic="%s"} 2.0'
    assert lost % s.topic("recommendations") in metrics
    assert "event buffer full" in processes.log("api")


def test_fuzz_finds_no_500_and_no_response_outside_the_schema(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests generated from the API's own OpenAPI schema, valid and not, to every operation
    (admin ones with the key): never a 500, and every response in the documented schema, status
    and content type."""
    s = start_api(processes, monkeypatch)
    store = open_store(s)
    store.put(trained(1))
    store.put(trained(2))
    wait_until(lambda: served_version(s) == 2, "a model served")
    schema = schemathesis.openapi.from_url(url(s, "/openapi.json"))
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every route is in the schema

    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode, headers=ADMIN))
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=checks)

        try:
            fuzz()
        except Unsatisfiable:
            # Only when there is nothing to get wrong (GET /v1/models takes no input at all).
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_a_redis_that_requires_a_password(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    """The password in the URL reaches every Redis client of the API: the snapshot store and
    its notices, the registry, the monitor's board; without it, the store says so."""
    private_redis.stop()
    private_redis.password = "s3cret-pass"
    private_redis.start()
    s = start_api(processes, monkeypatch, STREAMLEARN_REDIS_URL=private_redis.url)
    store = open_store(s)
    store.put(trained(1))
    store.put(trained(2))
    wait_until(lambda: served_version(s) == 2, "the newest version served, by Redis notice")
    promote = httpx.post(url(s, "/v1/models/ctr/promote"), json={"version": 1}, headers=ADMIN)
    assert promote.status_code == 200, promote.text
    wait_until(lambda: served_version(s) == 1, "the promotion served")
    assert httpx.get(url(s, "/v1/monitor"), timeout=5).status_code == 200  # the board, read
    anonymous = Settings(redis_url=private_redis.url.replace(":s3cret-pass@", ""))
    with pytest.raises(StoreUnavailable, match="Redis did not answer"):
        open_store(anonymous).hot.latest_version("ctr")
