"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from streamlearn.events import MAX_SLATE, Features, Id


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Candidate(Body):
    item_id: Id
    features: Features = {}


class ScoreRequest(Body):
    user_id: Id
    context: Features = {}
    items: list[Candidate] = Field(min_length=1, max_length=MAX_SLATE)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "context": {"segment": "family", "mobile": True},
                    "items": [
                        {"item_id": "i7", "features": {"category": "toys", "price": 0.2}},
                        {"item_id": "i9", "features": {"category": "books", "price": 0.1}},
                    ],
                }
            ]
        }
    )


class ItemScore(Body):
    item_id: str
    probability: float


class ScoreResponse(Body):
    model: str
    model_version: int
    scores: list[ItemScore]


class Health(Body):
    status: str
    model: str
    model_version: int | None
