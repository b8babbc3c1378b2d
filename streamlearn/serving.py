"""The model the API serves, swapped for a newer version without a pause.

Scoring reads one reference (an immutable :class:`Served`), and a refresh builds a new one and
replaces the reference in a single assignment, so a request always scores with one version from
start to end and names it. When the store is unreachable the holder keeps the model it has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr, field_validator

from streamlearn.errors import SnapshotError, StoreUnavailable
from streamlearn.events import MAX_SLATE, Features, Id
from streamlearn.explaining import Explanation, explain
from streamlearn.features import FeatureValue
from streamlearn.learning import CandidateScorer, Learner
from streamlearn.policy import Policy
from streamlearn.registry import Registry
from streamlearn.snapshots.base import SnapshotStore

log = logging.getLogger("streamlearn.serving")


class ApiPolicy(Policy):
    """The HTTP API: where it listens, what it accepts, whom it lets in, how it follows versions."""

    FLAT: ClassVar[dict[str, str]] = {
        "host": "api_host",
        "port": "api_port",
        "workers": "api_workers",
        "access_log": "api_access_log",
        "max_candidates": "max_candidates",
        "max_body_bytes": "max_body_bytes",
        "model_poll_s": "model_poll_s",
        "explore_epsilon": "explore_epsilon",
        "shadow_share": "shadow_share",
        "admin_key": "admin_key",
        "scoring_keys": "scoring_keys",
        "buffer_max": "api_buffer_max",
        "delivery_timeout_s": "api_delivery_timeout_s",
    }

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes sharing the port (uvicorn's), each following the "
        "registry itself; more than one counts metrics in PROMETHEUS_MULTIPROC_DIR.",
    )
    access_log: bool = Field(
        True, description="A log line per request (the metrics count them either way)."
    )
    max_candidates: int = Field(500, ge=1, description="Candidates per rank or score request.")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    model_poll_s: float = Field(
        5.0,
        gt=0,
        description="How often the API polls for a new version; the Redis notice is the fast path.",
    )
    explore_epsilon: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Default epsilon-greedy exploration of /v1/rank: what lets another model's "
        "ranking be judged on the slates this one served (0: none).",
    )
    shadow_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="The share of /v1/rank requests on which every challenger scores the "
        "candidates too (in shadow: only the served model ranks), and every model's scores are "
        "logged: what the monitor's off-policy estimates of each model are computed from.",
    )
    admin_key: SecretStr | None = Field(
        None, description="Key for the model admin endpoints; unset, they answer 403."
    )
    scoring_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys accepted on rank, score and outcomes; empty (the default) means open.",
    )

    @field_validator("admin_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # ADMIN_KEY= (empty, as compose passes an unset one) leaves the admin API off.
        return None if value == "" else value

    buffer_max: int = Field(
        100_000, ge=1, description="Events held while Kafka is unreachable before any is dropped."
    )
    delivery_timeout_s: float = Field(
        300.0, gt=0, description="How long an unpublished event is retried before it counts lost."
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Candidate(_Request):
    item_id: Id
    features: Features = {}


# The example the API's documentation shows (a rank request adds ``k``).
EXAMPLE_REQUEST: dict[str, JsonValue] = {
    "user_id": "u42",
    "context": {"segment": "family", "mobile": True},
    "items": [
        {"item_id": "i7", "features": {"category": "toys", "price": 0.2}},
        {"item_id": "i9", "features": {"category": "books", "price": 0.1}},
    ],
}


class ScoreRequest(_Request):
    """Candidates for one user in one context: the body of /v1/score, and a row of a batch."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    user_id: Id
    context: Features = {}
    items: list[Candidate] = Field(min_length=1, max_length=MAX_SLATE)
    explain: bool = Field(
        False,
        description="Also return, per item, each feature's contribution to the model's score "
        "(its logit; AdPredictor's probit argument), largest first, summing to it with the bias.",
    )


class _Candidate(Protocol):
    @property
    def item_id(self) -> str: ...
    @property
    def features(self) -> Mapping[str, FeatureValue]: ...


class Scorable(Protocol):
    """A request's candidates with its context: a :class:`ScoreRequest`, or the API's
    faster-read twin of its rank request."""

    @property
    def context(self) -> Mapping[str, FeatureValue]: ...
    @property
    def items(self) -> Sequence[_Candidate]: ...


@dataclass(frozen=True)
class Served:
    model_name: str
    version: int
    learner: Learner
    offsets: dict[int, int] = field(default_factory=dict)
    """What the version has learned: every example below these offsets (see Snapshot)."""

    def score(
        self, context: dict[str, FeatureValue], item_id: str, item: dict[str, FeatureValue]
    ) -> float:
        return self.learner.predict_proba_one(self.learner.serving_features(context, item_id, item))

    def explain(
        self, context: Mapping[str, FeatureValue], item_id: str, item: Mapping[str, FeatureValue]
    ) -> Explanation:
        return explain(self.learner, context, item_id, item)

    scorer: CandidateScorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A served version never learns: what its weights give can be kept.
        object.__setattr__(self, "scorer", self.learner.frozen_scorer())

    def score_request(self, request: Scorable) -> list[float]:
        """Every candidate's score, as :meth:`score` gives it (within 1e-15), in less time."""
        return self.scorer(request.context, [(c.item_id, c.features) for c in request.items])

    @property
    def tag(self) -> str:
        """How recommendation events name the version: ``<model>:v<version>``."""
        return f"{self.model_name}:v{self.version}"


class ModelHolder:
    """The version served under ``model_name``: with ``across`` (the API's served model) that
    name's serving pointer is followed, so a challenger promoted across names is served under
    it (:meth:`Registry.serving`); without (a challenger scoring in shadow), the model's own."""

    def __init__(self, store: SnapshotStore, model_name: str, across: bool = True) -> None:
        self._store = store
        self._registry = Registry(store)
        self.model_name = model_name
        self.across = across
        self.current: Served | None = None
        self.swaps = 0
        # The poll, the notice follower and an admin request may refresh at once: one at a time,
        # so a version is loaded and counted once.
        self._refreshing = threading.Lock()

    def refresh(self) -> bool:
        """Load the version to serve (the champion alias, else the latest) when it differs from
        the one held: promote and rollback both land here. True when swapped."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> bool:
        current = self.current
        held = (current.model_name, current.version) if current is not None else None
        try:
            if self.across:
                model, wanted = self._registry.serving(self.model_name)
            else:
                model, wanted = self.model_name, self._registry.served_version(self.model_name)
            if wanted is None or (model, wanted) == held:
                return False
            # A delta of the version held is applied to it, not loaded whole.
            loaded = (
                (current.version, current.learner)
                if current and current.model_name == model
                else None
            )
            snapshot = self._store.get(model, wanted, loaded=loaded)
        except SnapshotError as exc:
            # Store down, or a version that fails verification: keep serving what we hold.
            log.warning("keeping %s: %s", current.tag if current else "nothing", exc)
            return False
        self.current = Served(model, snapshot.version, snapshot.model, snapshot.offsets)
        self.swaps += 1
        log.info("serving %s under %s", self.current.tag, self.model_name)
        return True

    def follow(
        self,
        store: SnapshotStore,
        stop: threading.Event,
        started: threading.Event | None = None,
    ) -> None:
        """Refresh on every notice about this model until ``stop`` is set: the fast path of a
        promotion (polling is the fallback). Follows again with a capped backoff when the
        store's notices fail (Redis gone, say). ``started`` is set once the follower has
        listened and looked for itself, or found that it cannot listen: from then on no change
        goes unnoticed by it, and it swaps only on a notice."""
        backoff = 0.5
        while not stop.is_set():
            try:
                for notice in store.notices():
                    backoff = 0.5
                    if stop.is_set():
                        return
                    if notice is not None and self._concerns(notice):
                        self.refresh()
                    if started is not None:
                        started.set()
            except StoreUnavailable as exc:
                if started is not None:
                    started.set()
                log.warning("notices unavailable (%s): polling only, retrying", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _concerns(self, notice: str) -> bool:
        """A notice ("<model>:<version>" or "<model>:registry"; "" after a reconnect) about
        this name or the model served under it."""
        current = self.current
        names = {self.model_name, current.model_name if current is not None else self.model_name}
        return notice == "" or notice.split(":", 1)[0] in names
