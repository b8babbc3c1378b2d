"""All configuration, in one validated settings class.

Every value can be set in a TOML or YAML file named by ``STREAMLEARN_CONFIG`` (model specs are
easiest there), and overridden from the environment with the ``STREAMLEARN_`` prefix (nested
fields with ``__``, e.g. ``STREAMLEARN_MODEL__LEARNER__LEARNING_RATE=0.05``) or a ``.env`` file.
A setting that cannot work fails at start-up, naming the field and why. Processes read it
through :func:`get_settings`, which tests override by setting the environment of the process they
start, or by calling ``get_settings.cache_clear()``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from streamlearn.alerting import Rule
from streamlearn.errors import ConfigError
from streamlearn.learning import ModelSpec
from streamlearn.webhooks import Webhook

OutcomeKindName = Literal["click", "add_to_cart", "purchase"]


DEFAULT_RULES = (
    # The served model's loss rose (River's detector) and has not settled yet.
    Rule(
        name="concept-drift",
        metric="concept_drift",
        window="stream",
        bad="above",
        threshold=0.5,
        severity="critical",
    ),
    Rule(
        name="auc-floor",
        metric="roc_auc",
        window="5m",
        bad="below",
        threshold=0.55,
        clear_threshold=0.6,
        for_s=60,
        clear_for_s=60,
    ),
    # Any feature, or the prediction, far from the version's reference (PSI).
    Rule(
        name="data-drift",
        metric="psi:*",
        window="stream",
        bad="above",
        threshold=0.25,
        clear_threshold=0.1,
        severity="warning",
    ),
    Rule(
        name="outcomes-stopped",
        metric="outcome_rate",
        window="stream",
        bad="below",
        threshold=0.001,
        for_s=60,
        clear_for_s=30,
        severity="critical",
    ),
    Rule(
        name="positives-stopped",
        metric="positive_rate",
        window="stream",
        bad="below",
        threshold=0.0001,
        for_s=120,
        clear_for_s=30,
    ),
    Rule(
        name="watermark-stalled",
        metric="watermark_lag_s",
        window="stream",
        bad="above",
        threshold=300,
        clear_threshold=120,
        for_s=60,
    ),
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMLEARN_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # Infrastructure
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = Field(
        "streamlearn.", description="Prepended to every topic, consumer group and Redis key."
    )
    partitions: int = Field(3, ge=1, le=256, description="Partitions of every input topic.")

    # Join
    attribution_window_s: float = Field(30.0, gt=0, description="How long an outcome may follow.")
    allowed_lateness_s: float = Field(
        2.0, ge=0, description="How far the watermark trails the newest recommendation seen."
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="After this long without events the watermark follows wall time."
    )
    early_outcome_grace_s: float = Field(
        30.0, ge=0, description="How long an outcome waits for a recommendation it names."
    )
    positive_kinds: frozenset[OutcomeKindName] = frozenset({"click", "add_to_cart", "purchase"})
    combine: Literal["earliest", "sum_value"] = Field(
        "earliest",
        description="earliest: positive at the first qualifying outcome; sum_value: positive "
        "when the window closes, weighted by the sum of the outcomes' values.",
    )
    late_policy: Literal["drop", "correct"] = Field(
        "drop", description="correct: emit a correction example for a late positive."
    )
    match_by_user_item: bool = Field(
        False, description="Match outcomes without recommendation_id by (user_id, item_id)."
    )
    dedup_retention_s: float = Field(
        600.0, gt=0, description="How long a closed window is remembered, for dedup and late."
    )
    max_record_bytes: int = Field(
        256 * 1024, ge=1024, description="Larger input records go to the dead-letter topic."
    )
    joiner_tick_s: float = Field(1.0, gt=0, description="How often idle windows are checked.")
    joiner_commit_s: float = Field(
        0.1, gt=0, description="How often the joiner commits a transaction (as Kafka Streams)."
    )
    joiner_stats_s: float = Field(5.0, gt=0, description="How often join stats are published.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Where the processes' Prometheus endpoints listen (0.0.0.0 "
        "for a Prometheus in another container).",
    )
    joiner_metrics_port: int = Field(
        9108, ge=0, le=65535, description="Prometheus /metrics of the joiner; 0 turns it off."
    )
    trainer_metrics_port: int = Field(
        9109, ge=0, le=65535, description="Prometheus /metrics of the trainer; 0 turns it off."
    )

    # Learning and snapshots
    model: ModelSpec = Field(ModelSpec(), description="The champion: the model the API serves.")
    challengers: list[ModelSpec] = Field(
        default_factory=list,
        description="Models learning from the same pass over the examples, each in its own "
        "lineage of snapshots, for comparison.",
    )
    correction_policy: Literal["ignore", "learn"] = Field(
        "ignore",
        description="What the trainer does with a joiner's correction example (a late positive "
        "after its negative): ignore it, or learn the positive too, weighted.",
    )
    correction_weight: float = Field(1.0, gt=0, description="Weight of a learned correction.")
    checkpoint_every_n: int = Field(2000, ge=1, description="Snapshot after this many examples.")
    checkpoint_every_s: float = Field(10.0, gt=0, description="...or after this many seconds.")
    snapshot_hmac_key: SecretStr = SecretStr("streamlearn-dev-key-change-me")
    archive_url: str = Field(
        f"file://{Path.home()}/.cache/streamlearn/snapshots",
        description="The durable snapshot archive: file:///dir, s3://bucket/prefix, gs://, az://",
    )
    archive_options: dict[str, Any] = Field(
        default_factory=dict,
        description='obstore options for the archive, as JSON: {"endpoint": "http://...", '
        '"client_options": {"allow_http": true}}; credentials may come from AWS_* variables.',
    )

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_access_log: bool = Field(
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
        0.0, ge=0, le=1, description="Default epsilon-greedy exploration of /v1/rank."
    )
    admin_key: SecretStr | None = Field(
        None, description="Key for the model admin endpoints; unset, they answer 403."
    )
    scoring_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys accepted on rank, score and outcomes; empty (the default) means open.",
    )
    api_buffer_max: int = Field(
        100_000, ge=1, description="Events held while Kafka is unreachable before any is dropped."
    )
    api_delivery_timeout_s: float = Field(
        300.0, gt=0, description="How long an unpublished event is retried before it counts lost."
    )

    # Monitor and alerts
    monitor_rules: list[Rule] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="Alerting rules (metric, window, threshold, clear threshold, for how long).",
    )
    webhooks: list[Webhook] = Field(
        default_factory=list, description="Where alerts go besides the alerts topic."
    )
    monitor_evaluate_s: float = Field(
        5.0, gt=0, description="How often rolling metrics are evaluated and published."
    )
    monitor_reference_size: int = Field(
        2000, ge=100, description="A version's first examples: its data-drift reference."
    )
    monitor_recovery_examples: int = Field(
        2000, ge=1, description="Examples without a new detection before concept drift clears."
    )
    monitor_warmup_examples: int = Field(
        10_000,
        ge=0,
        description="A model's first served examples (and a new champion's) only set the level "
        "that concept drift is judged against.",
    )
    monitor_reference_renew_examples: int = Field(
        20_000,
        ge=0,
        description="While no champion is set (the API follows the trainer), the data-drift "
        "reference is renewed from the latest examples this often (0: never).",
    )
    monitor_max_versions: int = Field(
        20, ge=1, description="Served versions whose own rolling metrics are kept (newest)."
    )
    monitor_metrics_port: int = Field(
        9110, ge=0, description="Prometheus endpoint of the monitor (0: off)."
    )
    auto_action: Literal["off", "rollback"] = Field(
        "off",
        description="rollback: when an alarm of AUTO_ACTION_RULES fires, point the model's "
        "champion back at its previous version (and say so in an alert).",
    )
    auto_action_rules: list[str] = Field(
        default_factory=lambda: ["concept-drift"], description="The rules that trigger it."
    )
    alert_link: str = Field(
        "http://127.0.0.1:8000/docs",
        description="Where an alert's link points; {model} and {version} are filled in.",
    )

    # Simulator
    sim_rate: float = Field(50.0, gt=0, description="Recommendations per second.")
    sim_users: int = Field(500, ge=1)
    sim_items: int = Field(200, ge=2)
    sim_slate_size: int = Field(5, ge=1)
    sim_seed: int = 7
    sim_mean_delay_s: float = Field(2.0, gt=0, description="Mean delay of a conversion.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings, dotenv_settings]
        path = os.environ.get("STREAMLEARN_CONFIG")
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"STREAMLEARN_CONFIG={path}: no such file")
            if path.endswith((".yaml", ".yml")):
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            else:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def models(self) -> list[ModelSpec]:
        """The champion first, then the challengers."""
        return [self.model, *self.challengers]

    @model_validator(mode="after")
    def _model_names_differ(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must differ (each has its own snapshots): {names}")
        return self

    @model_validator(mode="after")
    def _slate_fits_catalog(self) -> Settings:
        if self.sim_slate_size > self.sim_items:
            raise ValueError("sim_slate_size cannot exceed sim_items")
        return self

    def topic(self, name: str) -> str:
        """The full name of one of streamlearn's topics."""
        return f"{self.topic_prefix}{name}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
