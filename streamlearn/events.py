"""The events that cross topics: recommendations, outcomes, labeled examples, dead letters.

Every model is versioned (``schema_version``), forbids unknown fields, accepts finite floats only
and bounds its strings and feature counts, so that one bad producer cannot poison the loop.

>>> rec = Recommendation.model_validate_json(
...     b'{"recommendation_id": "r1", "user_id": "u1", "event_time": 1700000000.0,'
...     b' "items": [{"item_id": "i1", "position": 0, "features": {"price": 9.5}}]}'
... )
>>> rec.items[0].propensity
1.0
>>> parse(Outcome, b'{"user_id": "u1", "item_id": "i1", "kind": "view", "event_time": 1}')
Traceback (most recent call last):
...
streamlearn.errors.InvalidEventError: kind: Input should be 'click', 'add_to_cart' or 'purchase'
"""

from __future__ import annotations

import base64
import sys
from typing import Annotated, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamlearn.errors import InvalidEventError

MAX_FEATURES = 256
MAX_SLATE = 500
MAX_RECORD_BYTES = 256 * 1024

Id = Annotated[str, Field(min_length=1, max_length=128)]
FeatureName = Annotated[str, Field(min_length=1, max_length=64)]
FeatureValue = float | bool | Annotated[str, Field(max_length=128)]
Features = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]
EventTime = Annotated[float, Field(ge=0, description="Seconds since the epoch, event time.")]
OutcomeKind = Literal["click", "add_to_cart", "purchase"]
ExampleKind = Literal["immediate", "fake_negative", "delayed_positive", "real_negative"]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class SlateItem(Event):
    item_id: Id
    position: int = Field(ge=0, lt=MAX_SLATE)
    score: float | None = Field(None, description="What the serving model predicted.")
    propensity: float = Field(1.0, gt=0, le=1, description="Probability it was shown here.")
    features: Features = {}


ModelScores = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=128)], list[float]],
    Field(max_length=16),
]


def _check_scores(scores: dict[str, list[float]] | None, candidates: list[str] | None) -> None:
    if scores and (candidates is None or any(len(s) != len(candidates) for s in scores.values())):
        raise ValueError("scores must give one per candidate, in the candidates' order")


class Recommendation(Event):
    """What was shown to whom, with what, by which model version."""

    schema_version: Literal[1] = 1
    recommendation_id: Id
    user_id: Id
    event_time: EventTime
    context: Features = {}
    items: list[SlateItem] = Field(min_length=1, max_length=MAX_SLATE)
    model_version: str | None = Field(None, max_length=128)
    # What an off-policy estimate needs besides each item's propensity (the API logs both).
    epsilon: float | None = Field(
        None, ge=0, le=1, description="The exploration the slate was chosen with, if any."
    )
    candidates: list[Id] | None = Field(
        None,
        max_length=MAX_SLATE,
        description="Every candidate of the request in its order, shown or not: what another "
        "model's ranking is replayed over.",
    )
    scores: ModelScores | None = Field(
        None,
        description="Each model version's score of every candidate, in the candidates' order "
        "(the served one's and the challengers' in shadow).",
    )

    @model_validator(mode="after")
    def _items_unique(self) -> Recommendation:
        if len({i.item_id for i in self.items}) != len(self.items):
            raise ValueError("items must not repeat an item_id")
        if self.candidates is not None and not {i.item_id for i in self.items} <= set(
            self.candidates
        ):
            raise ValueError("every item shown must be one of the candidates")
        _check_scores(self.scores, self.candidates)
        return self


class ShownItem(Event):
    """One slot of a closed slate: what was shown there and what it earned in its window."""

    item_id: Id
    position: int = Field(ge=0, lt=MAX_SLATE)
    propensity: float = Field(gt=0, le=1)
    score: float | None = None
    converted: bool
    value: float = Field(0.0, ge=0, description="The qualifying outcomes' value.")


class Slate(Event):
    """A recommendation once its attribution window has closed, every slot with its final
    label: what off-policy estimates and ranking metrics are computed from (one per
    recommendation, emitted by the join with its last examples)."""

    schema_version: Literal[1] = 1
    recommendation_id: Id
    user_id: Id
    event_time: EventTime
    model_version: str | None = None
    epsilon: float | None = None
    candidates: list[Id] | None = None
    scores: ModelScores | None = None
    shown: list[ShownItem] = Field(min_length=1, max_length=MAX_SLATE)

    @model_validator(mode="after")
    def _scores_match(self) -> Slate:
        _check_scores(self.scores, self.candidates)
        return self


class Outcome(Event):
    """A conversion: the storefront saw the user act on an item."""

    schema_version: Literal[1] = 1
    outcome_id: Id | None = Field(None, description="Set by producers so retries can be dropped.")
    recommendation_id: Id | None = None
    user_id: Id
    item_id: Id
    kind: OutcomeKind
    value: float = Field(0.0, ge=0)
    event_time: EventTime


class LabeledExample(Event):
    """One impression (a recommendation x one item it showed) with its label."""

    schema_version: Literal[1] = 1
    example_id: Id
    recommendation_id: Id
    user_id: Id
    item_id: Id
    position: int
    propensity: float
    served_score: float | None
    model_version: str | None
    context: Features
    item_features: Features
    label: bool
    outcome_kind: OutcomeKind | None = None
    value: float = 0.0
    weight: float = Field(1.0, ge=0, description="How much the example counts when learned.")
    correction: bool = Field(
        False, description="A late positive for an impression already emitted as a negative."
    )
    recommendation_time: EventTime
    outcome_time: EventTime | None = None
    kind: ExampleKind | None = Field(
        None,
        description="immediate: converted before any negative was emitted; fake_negative: a "
        "provisional negative (at once, or when the observation window ends); "
        "delayed_positive: a conversion after a fake negative, or after the window as a "
        "correction; real_negative: the final negative at the window's end (weight 0 where "
        "the impression was learned already as a fake negative). None: a streamlearn before "
        "label modes.",
    )
    elapsed_s: float | None = Field(
        None, ge=0, description="Event time from the impression to this example's emission."
    )

    @staticmethod
    def id_for(recommendation_id: str, item_id: str) -> str:
        return f"{recommendation_id}:{item_id}"


# The trainer's decoder: LabeledExample's fields and rules again, as a msgspec struct, which
# decodes in a third of the time. It is never more lenient than the pydantic model (finite floats
# by bounds, lengths, literals, unknown fields refused, and no coercion at all: "1" is not 1),
# and whatever it refuses goes through the pydantic model, whose verdict and message are final.
_MAX = sys.float_info.max
StructFinite = Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0, le=_MAX)]
StructId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
StructFeatures = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)],
        StructFinite | bool | Annotated[str, msgspec.Meta(max_length=128)],
    ],
    msgspec.Meta(max_length=MAX_FEATURES),
]


class MonitoredExample(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the monitor reads of a labeled example (see :func:`parse_monitored`): the fields
    its figures need, the others skipped unread, which makes decoding three times faster again
    (gc=False: it holds no cycles). Its features' names and sizes are not checked here (it only
    bins their values; the trainer's :class:`ExampleRecord` checks them)."""

    served_score: StructFinite | None
    model_version: str | None
    context: dict[str, float | bool | str]
    item_features: dict[str, float | bool | str]
    label: bool
    recommendation_time: _NonNegative
    correction: bool = False
    kind: ExampleKind | None = None


class ExampleRecord(MonitoredExample, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A :class:`LabeledExample` as the trainer decodes it (see :func:`parse_example`)."""

    context: StructFeatures  # checked here
    item_features: StructFeatures
    example_id: StructId
    recommendation_id: StructId
    user_id: StructId
    item_id: StructId
    position: int
    propensity: StructFinite
    schema_version: Literal[1] = 1
    outcome_kind: OutcomeKind | None = None
    value: StructFinite = 0.0
    weight: _NonNegative = 1.0
    outcome_time: _NonNegative | None = None
    elapsed_s: _NonNegative | None = None


_EXAMPLE = msgspec.json.Decoder(ExampleRecord)


def parse_example(raw: bytes | None, max_bytes: int = MAX_RECORD_BYTES) -> ExampleRecord:
    """:func:`parse` for labeled examples, three times faster on valid records, with the same
    verdict and message on invalid ones."""
    return _decode_example(_EXAMPLE, raw, max_bytes)


_MONITORED = msgspec.json.Decoder(MonitoredExample)


def parse_monitored(raw: bytes | None, max_bytes: int = MAX_RECORD_BYTES) -> MonitoredExample:
    """:func:`parse_example` for the monitor. The joiner wrote the record whole; what the
    monitor does not read is the trainer's to judge."""
    return _decode_example(_MONITORED, raw, max_bytes)


_Struct = TypeVar("_Struct", bound=msgspec.Struct)


def _decode_example(
    decoder: msgspec.json.Decoder[_Struct], raw: bytes | None, max_bytes: int
) -> _Struct:
    """msgspec's reading of a labeled example; a record it refuses goes through the pydantic
    model, whose verdict and message are final (it may coerce what msgspec will not)."""
    if raw is not None and len(raw) <= max_bytes:
        try:
            return decoder.decode(raw)
        except msgspec.DecodeError:
            pass
    example = parse(LabeledExample, raw, max_bytes)
    return msgspec.convert(example.model_dump(), decoder.type)  # type: ignore[no-any-return]


class DeadLetter(BaseModel):
    """A record that could not be used, with why and where it came from."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    reason: str
    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str
    failed_at: float

    @classmethod
    def of(
        cls,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        failed_at: float,
    ) -> DeadLetter:
        return cls(
            reason=reason,
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            value_b64=base64.b64encode(value or b"").decode(),
            failed_at=failed_at,
        )


E = TypeVar("E", bound=BaseModel)


def parse(model: type[E], raw: bytes | None, max_bytes: int = MAX_RECORD_BYTES) -> E:
    """Parse one record's value, or raise :class:`InvalidEventError` saying why in one line."""
    if raw is None:
        raise InvalidEventError("empty value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidEventError(f"record of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidEventError(f"{where}: {first['msg']}{more}") from None


class PartitionHealth(BaseModel):
    pending_impressions: int
    watermark: float | None
    watermark_lag_s: float | None
    # Impressions without their final label yet, by label-maturity bucket of recommendation
    # time (JoinPolicy.bucket): what the monitor's maturity view needs from the join's state.
    unlabeled: dict[int, int] = {}


class JoinReport(BaseModel):
    """What one joiner process publishes on the stats topic every few seconds."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    worker: str
    at: float
    counters: dict[str, int]
    coverage: float | None
    partitions: dict[int, PartitionHealth]
    # Records found on a partition other than their user's and forwarded through a repartition
    # topic: input -> the guess at the producer's partitioner -> count, since the process started.
    forwarded: dict[str, dict[str, int]] = {}
