"""All configuration, in one validated settings class.

Every value can be set in a TOML or YAML file named by ``STREAMLEARN_CONFIG`` (model specs are
easiest there), and overridden from the environment with the ``STREAMLEARN_`` prefix (nested
fields with ``__``, e.g. ``STREAMLEARN_MODEL__LEARNER__LEARNING_RATE=0.05``) or a ``.env`` file.
A setting that cannot work fails at start-up, naming the field and why. Processes read it
through :func:`get_settings`, which tests override by setting the environment of the process they
start, or by calling ``get_settings.cache_clear()``.

Each area's settings are a policy defined beside the code it configures, composed here as a
section: ``join`` (:class:`~streamlearn.joining.JoinPolicy`), ``training``
(:class:`~streamlearn.training.TrainingPolicy`), ``monitor``
(:class:`~streamlearn.monitoring.MonitorPolicy`), ``api``
(:class:`~streamlearn.serving.ApiPolicy`), ``retention``
(:class:`~streamlearn.retention.RetentionPolicy`), ``archive``
(:class:`~streamlearn.archive.ArchivePolicy`) and ``daily``
(:class:`~streamlearn.daily.DailyPolicy`). A section's field is set as
``STREAMLEARN_JOIN__WINDOW_S`` or ``[join] window_s = 30``, and also by the flat name it had
before sections existed (``STREAMLEARN_ATTRIBUTION_WINDOW_S``, ``attribution_window_s = 30``;
each policy's ``FLAT`` lists them). Between sources the usual order holds (arguments, then the
environment, then ``.env``, then the file); within one source a nested name wins over a flat one.

>>> Settings(attribution_window_s=5, join={"allowed_lateness_s": 1}).join.window_s
5.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources import EnvSettingsSource

from streamlearn.archive import ArchivePolicy
from streamlearn.daily import DailyPolicy
from streamlearn.errors import ConfigError
from streamlearn.events import MAX_RECORD_BYTES
from streamlearn.joining import JoinPolicy
from streamlearn.learning import ModelSpec
from streamlearn.monitoring import MonitorPolicy
from streamlearn.policy import Policy
from streamlearn.retention import RetentionPolicy
from streamlearn.serving import ApiPolicy
from streamlearn.training import TrainingPolicy

TopicRole = Literal[
    "recommendations",
    "outcomes",
    "examples",
    "slates",
    "dead_letters",
    "joiner_stats",
    "alerts",
    "joiner_state",
    "recommendations_repartition",
    "outcomes_repartition",
]
TOPIC_NAMES: dict[TopicRole, str] = {
    "recommendations": "recommendations",
    "outcomes": "outcomes",
    "examples": "examples",
    "slates": "slates",
    "dead_letters": "dead-letters",
    "joiner_stats": "joiner-stats",
    "alerts": "alerts",
    "joiner_state": "joiner-changelog",  # the join state's changelog
    # Where the joiner forwards input records found on the wrong partition (Kafka Streams'
    # naming: <application>-<name>-repartition).
    "recommendations_repartition": "joiner-recommendations-repartition",
    "outcomes_repartition": "joiner-outcomes-repartition",
}

DEVELOPMENT_KEY = "streamlearn-dev-key-change-me"
MIN_KEY_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMLEARN_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # Infrastructure
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description='librdkafka properties for every Kafka client, as JSON: {"security.protocol": '
        '"SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": ...}.',
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Every Redis client's URL: a password as redis://:PASSWORD@host:6379/0 (or "
        "user:password), TLS as rediss://.",
    )
    topic_prefix: str = Field(
        "streamlearn.", description="Prepended to every topic, consumer group and Redis key."
    )
    partitions: int = Field(3, ge=1, le=256, description="Partitions of every input topic.")
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES, ge=1024, description="Larger input records go to the dead-letter topic."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Where the processes' Prometheus endpoints listen (0.0.0.0 "
        "for a Prometheus in another container).",
    )

    # Each area's policy
    join: JoinPolicy = Field(default_factory=JoinPolicy)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    monitor: MonitorPolicy = Field(default_factory=MonitorPolicy)
    api: ApiPolicy = Field(default_factory=ApiPolicy)
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy,
        description="Every model's retention, unless its spec sets its own.",
    )
    archive: ArchivePolicy = Field(default_factory=ArchivePolicy)
    daily: DailyPolicy = Field(default_factory=DailyPolicy)

    # Models and snapshots
    model: ModelSpec = Field(ModelSpec(), description="The champion: the model the API serves.")
    challengers: list[ModelSpec] = Field(
        default_factory=list,
        description="Models learning from the same pass over the examples, each in its own "
        "lineage of snapshots, for comparison.",
    )
    snapshot_hmac_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_KEY),
        description="The key that signs snapshots and the monitor's state. The default is for "
        "development only: outside DEV_MODE a process refuses to start with it.",
    )
    dev_mode: bool = Field(
        False,
        description="Development mode (make run, the loop and the tests set it): the "
        "development signing key is allowed.",
    )
    archive_url: str = Field(
        f"file://{Path.home()}/.cache/streamlearn/snapshots",
        description="The durable snapshot archive: file:///dir, s3://bucket/prefix, gs://, az://",
    )
    archive_options: dict[str, Any] = Field(
        default_factory=dict,
        description='obstore options for the archive, as JSON: {"endpoint": "http://...", '
        '"client_options": {"allow_http": true}}; credentials may come from AWS_* variables.',
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
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, EnvSettingsSource)
        sources: list[PydanticBaseSettingsSource] = [
            _Folded(init_settings),
            env_settings,
            _FlatEnv(env_settings),
            dotenv_settings,
            _FlatEnv(dotenv_settings),
        ]
        path = os.environ.get("STREAMLEARN_CONFIG")
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"STREAMLEARN_CONFIG={path}: no such file")
            if path.endswith((".yaml", ".yml")):
                sources.append(_Folded(YamlConfigSettingsSource(settings_cls, yaml_file=path)))
            else:
                sources.append(_Folded(TomlConfigSettingsSource(settings_cls, toml_file=path)))
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
        unknown = sorted(set(self.training.models) - set(names))
        if unknown:
            raise ValueError(f"TRAINER_MODELS names models not configured: {unknown}")
        return self

    @property
    def trained_models(self) -> list[ModelSpec]:
        """The configured models this trainer process learns (TRAINER_MODELS; all by default)."""
        chosen = self.training.models
        return [m for m in self.models if not chosen or m.name in chosen]

    @property
    def trainer_group(self) -> str:
        """The trainer's consumer group: ``trainer``, or one per subset of TRAINER_MODELS (each
        subset reads every example)."""
        chosen = self.training.models
        if not chosen or set(chosen) == {m.name for m in self.models}:
            return "trainer"
        return "trainer." + "+".join(sorted(chosen))

    @model_validator(mode="after")
    def _slate_fits_catalog(self) -> Settings:
        if self.sim_slate_size > self.sim_items:
            raise ValueError("sim_slate_size cannot exceed sim_items")
        return self

    def check_safe(self) -> None:
        """What a process checks before it starts: outside development mode, no development
        key. Raises ConfigError naming the setting."""
        if self.dev_mode:
            return
        key = self.snapshot_hmac_key.get_secret_value()
        if key == DEVELOPMENT_KEY:
            raise ConfigError(
                "STREAMLEARN_SNAPSHOT_HMAC_KEY is the development key, which anyone can read in "
                "streamlearn's source: set your own (openssl rand -hex 32), or set "
                "STREAMLEARN_DEV_MODE=true to develop"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"STREAMLEARN_SNAPSHOT_HMAC_KEY is {len(key)} characters long: use at least "
                f"{MIN_KEY_LENGTH} (openssl rand -hex 32 makes 64)"
            )

    @property
    def store_url(self) -> str:
        """This namespace's root in the object store (``ARCHIVE_URL``): its snapshots, and its
        event archive under ``events/``, namespaced by the topic prefix as everything else is."""
        return f"{self.archive_url.rstrip('/')}/{self.topic_prefix.strip('.') or 'default'}"

    def topic(self, role: TopicRole) -> str:
        """The full name of one of streamlearn's topics, by its role: the one way every process,
        test and bench names a topic (``topics.declared`` holds their specs)."""
        return f"{self.topic_prefix}{TOPIC_NAMES[role]}"


@lru_cache
def get_settings() -> Settings:
    return Settings()


@cache
def flat_names() -> dict[str, tuple[str, str]]:
    """Every flat name a section's field answers to: flat name -> (section, field)."""
    out = {}
    for section, info in Settings.model_fields.items():
        policy = info.annotation
        if isinstance(policy, type) and issubclass(policy, Policy):
            for name, flat in policy.FLAT.items():
                out[flat] = (section, name)
    return out


def _section_field(section: str, name: str) -> FieldInfo:
    policy = Settings.model_fields[section].annotation
    assert isinstance(policy, type) and issubclass(policy, Policy)
    return policy.model_fields[name]


def _fold(values: Mapping[str, Any]) -> dict[str, Any]:
    """One source's values with flat names moved into their sections (a nested value given in
    the same source wins)."""
    flat = flat_names()
    out = {k: v for k, v in values.items() if k not in flat}
    for key, value in values.items():
        if key in flat:
            section, name = flat[key]
            given = out.get(section) or {}
            nested = dict(given.model_dump() if isinstance(given, Policy) else given)
            nested.setdefault(name, value)
            out[section] = nested
    return out


class _Folded(PydanticBaseSettingsSource):
    """A source (arguments, a configuration file) whose flat names are folded into sections."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return _fold(self._inner())


class _FlatEnv(PydanticBaseSettingsSource):
    """The flat names of sections' fields in an environment (``STREAMLEARN_ATTRIBUTION_WINDOW_S``
    for ``join.window_s``), read from the variables the environment or ``.env`` source holds,
    and decoded as it decodes them (JSON for lists, sets and objects)."""

    def __init__(self, env: EnvSettingsSource) -> None:
        super().__init__(env.settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = self._env
        out: dict[str, dict[str, Any]] = {}
        for flat, (section, name) in flat_names().items():
            var = f"{env.env_prefix}{flat}"
            raw = env.env_vars.get(var if env.case_sensitive else var.lower())
            if raw is None:
                continue
            field = _section_field(section, name)
            value: Any = raw
            if env.field_is_complex(field):
                value = env.decode_complex_value(name, field, raw)
            out.setdefault(section, {})[name] = value
        return out
