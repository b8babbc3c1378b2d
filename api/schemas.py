"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamlearn.events import MAX_SLATE, StructFeatures, StructId
from streamlearn.serving import EXAMPLE_REQUEST, Scorable, ScoreRequest


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RankRequest(ScoreRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{**EXAMPLE_REQUEST, "k": 1}]})

    k: int = Field(10, ge=1, le=MAX_SLATE, description="How many items to return.")
    epsilon: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Exploration for this request: with this probability a position gets a "
        "uniformly drawn candidate instead of the best one. Default: the server's setting.",
    )

    @model_validator(mode="after")
    def _items_unique(self) -> RankRequest:
        if len({c.item_id for c in self.items}) != len(self.items):
            raise ValueError("items must not repeat an item_id")
        return self


class RankCandidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    item_id: StructId
    features: StructFeatures = {}


class RankStruct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """:class:`RankRequest` as /v1/rank's hot path reads it (:func:`read_rank`): its fields and
    rules again as a msgspec struct, which decodes 100 candidates in a fifth of the time. Never
    more lenient than the pydantic model (finite floats by bounds, lengths, unknown fields
    refused, no coercion at all: ``2.0`` is not a ``k``, ``1`` is not ``explain``); whatever it
    refuses goes to the route, whose pydantic model gives the final answer."""

    user_id: StructId
    context: StructFeatures = {}
    items: Annotated[list[RankCandidate], msgspec.Meta(min_length=1, max_length=MAX_SLATE)]
    explain: bool = False
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_SLATE)] = 10
    epsilon: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


_RANK = msgspec.json.Decoder(RankStruct)


class RankBody(Scorable, Protocol):
    """What /v1/rank reads of a request: a :class:`RankRequest` or a :class:`RankStruct`."""

    @property
    def user_id(self) -> str: ...
    @property
    def explain(self) -> bool: ...
    @property
    def k(self) -> int: ...
    @property
    def epsilon(self) -> float | None: ...


def read_rank(body: bytes) -> RankStruct | None:
    """The request when msgspec reads it and its items are distinct; else None: the route
    decides (it may accept what msgspec will not coerce)."""
    try:
        request = _RANK.decode(body)
    except msgspec.DecodeError:
        return None
    if len({c.item_id for c in request.items}) != len(request.items):
        return None
    return request


class Contribution(Body):
    feature: str = Field(description="As the model encodes it: c:segment_gamer, i:price, a * b.")
    contribution: float


class Explanation(Body):
    """Why the model scored an item so: ``bias`` plus the contributions is ``score``."""

    link: Literal["logit", "probit"] = Field(
        description="What the score is the argument of: the probability is its sigmoid (logit) "
        "or the normal distribution's cdf (probit, AdPredictor)."
    )
    score: float
    bias: float
    contributions: list[Contribution] = Field(description="Largest magnitude first.")


class ItemScore(Body):
    item_id: str
    probability: float
    explanation: Explanation | None = Field(None, description="With ``explain: true``.")


class ScoreResponse(Body):
    model: str
    model_version: int
    scores: list[ItemScore]


class RankedItem(Body):
    item_id: str
    position: int
    score: float
    propensity: float = Field(description="Probability this item was placed here.")
    explanation: Explanation | None = Field(None, description="With ``explain: true``.")


class RankResponse(Body):
    recommendation_id: str = Field(description="Send it with the outcomes of this slate.")
    model: str
    model_version: int
    items: list[RankedItem]
    logged: bool = Field(
        description="The recommendation event was queued for Kafka (false: dropped, the buffer "
        "was full); learning depends on it."
    )


class OutcomesResponse(Body):
    accepted: int
    logged: int = Field(description="How many were queued for Kafka.")


class Health(Body):
    status: str
    model: str = Field(description="The model served (a challenger promoted across names too).")
    model_version: int | None
    served_as: str = Field(description="The API's model name, under which it is served.")
    worker: int = Field(description="The process that answered (one of API_WORKERS).")
    offsets: dict[str, int] = Field(
        default_factory=dict,
        description="Per partition of the examples topic, the offset below which the version "
        "served has learned every example: how fresh it is.",
    )


class Readiness(Body):
    ready: bool
    model_version: int | None
    kafka_connected: bool
    events_buffered: int


class VersionSet(Body):
    version: int = Field(ge=1)


class Promotion(Body):
    """What to serve under a model's name: its own ``version``, or another model's (``model``:
    its ``version``, or without one what it serves itself, its newest as it learns)."""

    version: int | None = Field(None, ge=1)
    model: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]{0,63}$", examples=["ctr-aware"])

    @model_validator(mode="after")
    def _something(self) -> Promotion:
        if self.version is None and self.model is None:
            raise ValueError("give a version, a model, or both")
        return self


class AliasMove(Body):
    model: str
    alias: str
    version: int | None = Field(description="The version served under the name after the move.")
    serves: str = Field(description="Whose version: this model, or one promoted across names.")


class ModelSummary(Body):
    model: str
    aliases: dict[str, int]
    serves: str | None = Field(
        None, description="Another model served under this name (promoted across names)."
    )
    pinned: list[int]
    challengers: list[str] = Field(
        default_factory=list, description="Retrained challengers learning live beside it."
    )
    versions: list[dict[str, Any]] = Field(
        description="The newest versions (``limit``) and every aliased or pinned one, oldest "
        "first; older ones page through ``/v1/models/{model}/versions``."
    )
    moves: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The registry's newest moves (promotions, rollbacks, serving moves, pins) "
        "with their times, oldest first.",
    )


class VersionPage(Body):
    versions: list[dict[str, Any]] = Field(description="Oldest first.")
    next_before: int | None = Field(
        description="Pass as ``before`` for the page of older versions; null on the last page."
    )


class Problem(Body):
    """Every error: ``detail`` says what was wrong (a list of fields for 422)."""

    detail: str | list[dict[str, Any]]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer."""
    why = {
        400: "The body is not text at all (not UTF-8): there is no JSON to read.",
        401: "No key where one is required.",
        403: "A key that is not valid here, or the admin API is off.",
        404: "No such model version or alias.",
        409: "Refused: a version that fails verification, or nothing to roll back to.",
        413: "Request body too large.",
        503: "No model loaded yet, or the snapshot store is unreachable.",
    }
    return {code: {"model": Problem, "description": why[code]} for code in codes}
