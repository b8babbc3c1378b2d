"""Rank, score and outcomes: what a storefront calls."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Body, HTTPException, Response, status
from pydantic import Field

from api.deps import PublisherDep, Ranking, RankingDep, ServedDep, SettingsDep
from api.routing import OnePassJSON
from api.schemas import (
    OutcomesResponse,
    RankBody,
    RankRequest,
    RankResponse,
    ScoreResponse,
    problems,
)
from api.security import ScoringKey
from streamlearn.events import Outcome
from streamlearn.features import FeatureValue
from streamlearn.ranking import choose_slate
from streamlearn.serving import ScoreRequest, Served

router = APIRouter(
    prefix="/v1",
    tags=["scoring"],
    dependencies=[ScoringKey],
    responses=problems(400, 401, 403, 413, 503),
    route_class=OnePassJSON,  # a storefront's every request: its body validated in one pass
)

MAX_OUTCOMES = 1000


def _bounded(body: ScoreRequest, max_candidates: int) -> None:
    if len(body.items) > max_candidates:
        raise HTTPException(422, detail=f"at most {max_candidates} candidates per request")


def _explained(
    body: ScoreRequest | RankBody,
    served: Served,
    item_id: str,
    features: Mapping[str, FeatureValue],
) -> dict[str, Any]:
    if not body.explain:
        return {}
    return {"explanation": served.explain(body.context, item_id, features).as_dict()}


def _json(payload: dict[str, Any]) -> Response:
    # The route's response_model documents the body; building it as a dict and encoding it
    # with orjson skips FastAPI's re-validation of what this module just built.
    return Response(orjson.dumps(payload), media_type="application/json")


# async: scoring is CPU-bound and short, so it runs on the event loop without a thread hop.
@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, served: ServedDep, settings: SettingsDep) -> Response:
    """Probability of a conversion for each candidate, from one model version. Not logged: use
    /v1/rank for what is shown to users."""
    _bounded(body, settings.api.max_candidates)
    scores = served.score_request(body)
    return _json(
        {
            "model": served.model_name,
            "model_version": served.version,
            "scores": [
                {
                    "item_id": c.item_id,
                    "probability": p,
                    **_explained(body, served, c.item_id, c.features),
                }
                for c, p in zip(body.items, scores, strict=True)
            ],
        }
    )


@router.post("/rank", response_model=RankResponse)
async def rank(
    body: RankRequest,
    ranking: RankingDep,
) -> Response:
    """The top ``k`` candidates by predicted conversion (with optional epsilon-greedy
    exploration), and the recommendation event of what was served published to Kafka, with the
    features, scores, positions and propensities, for the joiner to label."""
    _bounded(body, ranking.settings.api.max_candidates)
    return Response(ranked(body, ranking), media_type="application/json")


def _six_digits(scores: list[float]) -> list[float]:
    """Scores as logged: to six decimals, which is all a replayed ranking needs (numpy's round,
    a fifth of the time of Python's round on a hundred scores, and the same figures)."""
    rounded: list[float] = np.round(np.array(scores), 6).tolist()
    return rounded


def ranked(body: RankBody, ranking: Ranking) -> bytes:
    """``/v1/rank``'s answer to a valid request of at most ``max_candidates`` (JSON), its
    recommendation event published: what the route and :class:`api.hotpath.RankHotPath` serve."""
    served, settings, rng = ranking.served, ranking.settings, ranking.rng
    scores = served.score_request(body)
    epsilon = settings.api.explore_epsilon if body.epsilon is None else body.epsilon
    candidates = [c.item_id for c in body.items]
    slate = choose_slate(list(zip(candidates, scores, strict=True)), body.k, epsilon, rng)
    features = {c.item_id: c.features for c in body.items}
    logged_scores = None
    if settings.api.shadow_share > 0 and rng.random() < settings.api.shadow_share:
        # Every model's scores of every candidate, the served one's and the challengers' in
        # shadow: the monitor replays each model's ranking over this slate.
        logged_scores = {served.tag: _six_digits(scores)}
        for shadow in ranking.shadows:
            version = shadow.current
            if version is not None and version.model_name != served.model_name:
                logged_scores[version.tag] = _six_digits(version.score_request(body))
    recommendation_id = uuid.uuid4().hex
    # The event exactly as Recommendation.model_dump_json writes it, without building the model
    # (a sixth of the request's time): every value is already valid, the request's by its
    # schema and the rest made here (a test compares the bytes with the model's).
    event = {
        "schema_version": 1,
        "recommendation_id": recommendation_id,
        "user_id": body.user_id,
        "event_time": ranking.clock.now(),
        "context": body.context,
        "items": [
            {
                "item_id": p.item_id,
                "position": p.position,
                "score": p.score,
                "propensity": p.propensity,
                "features": features[p.item_id],
            }
            for p in slate
        ],
        "model_version": served.tag,
        "epsilon": epsilon,
        "candidates": candidates,
        "scores": logged_scores,
    }
    logged = ranking.publisher.publish(
        settings.topic("recommendations"), body.user_id, orjson.dumps(event)
    )
    return orjson.dumps(
        {
            "recommendation_id": recommendation_id,
            "model": served.model_name,
            "model_version": served.version,
            "items": [
                {
                    "item_id": p.item_id,
                    "position": p.position,
                    "score": p.score,
                    "propensity": p.propensity,
                    **_explained(body, served, p.item_id, features[p.item_id]),
                }
                for p in slate
            ],
            "logged": logged,
        }
    )


@router.post("/outcomes", response_model=OutcomesResponse, status_code=status.HTTP_202_ACCEPTED)
async def outcomes(
    body: Annotated[
        Outcome | Annotated[list[Outcome], Field(min_length=1, max_length=MAX_OUTCOMES)],
        Body(
            openapi_examples={
                "one": {
                    "summary": "One outcome",
                    "value": {
                        "recommendation_id": "5f0c2b9e8d7a4e21b3c4d5e6f7a8b9c0",
                        "user_id": "u42",
                        "item_id": "i7",
                        "kind": "purchase",
                        "value": 19.9,
                        "event_time": 1763900000.0,
                    },
                },
            }
        ),
    ],
    settings: SettingsDep,
    publisher: PublisherDep,
) -> OutcomesResponse:
    """Conversion outcomes (one, or an array of up to 1000), validated and published to the
    outcomes topic, for storefronts without a Kafka producer of their own."""
    batch = body if isinstance(body, list) else [body]
    topic = settings.topic("outcomes")
    logged = sum(publisher.publish(topic, o.user_id, o.model_dump_json().encode()) for o in batch)
    return OutcomesResponse(accepted=len(batch), logged=logged)
