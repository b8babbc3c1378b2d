"""Model specs from a TOML or YAML file with environment overrides, and the errors a bad one
gives at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streamlearn.errors import ConfigError
from streamlearn.learning import AdPredictorSpec, FactorizationMachineSpec
from streamlearn.settings import Settings, flat_names
from topics import client_config, consumer_config, producer_config

TOML = """
checkpoint_every_n = 500
[model]
name = "ctr"
encoding = "hash"
[model.learner]
kind = "logistic_regression"
learning_rate = 0.2

[[challengers]]
name = "ctr-fm"
scale = true
[challengers.learner]
kind = "fm"
n_factors = 4
"""

YAML = """
model:
  name: ctr
challengers:
  - name: ctr-adpredictor
    learner: {kind: ad_predictor, beta: 0.2}
"""


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> Settings:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("STREAMLEARN_CONFIG", str(path))
    return Settings()


def test_toml_file_with_an_environment_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMLEARN_MODEL__LEARNER__LEARNING_RATE", "0.05")
    s = load(tmp_path, monkeypatch, "streamlearn.toml", TOML)
    assert s.training.checkpoint_every_n == 500 and s.model.encoding == "hash"
    assert s.model.learner.kind == "logistic_regression"
    assert s.model.learner.learning_rate == 0.05  # the environment wins over the file
    (fm,) = s.challengers
    assert isinstance(fm.learner, FactorizationMachineSpec) and fm.learner.n_factors == 4
    assert [m.name for m in s.models] == ["ctr", "ctr-fm"]


def test_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(tmp_path, monkeypatch, "streamlearn.yaml", YAML)
    assert isinstance(s.challengers[0].learner, AdPredictorSpec)
    assert s.challengers[0].learner.beta == 0.2


@pytest.mark.parametrize(
    "text,where,why",
    [
        (
            "[model.learner]\nkind = 'svm'\n",
            "model.learner",
            "'logistic_regression', 'ad_predictor', 'fm'",
        ),
        ("[model.learner]\nkind = 'fm'\nn_factors = -1\n", "n_factors", "greater than or equal"),
        ("[model]\nencoding = 'bloom'\n", "model.encoding", "'onehot' or 'hash'"),
        ("[model]\nlerning_rate = 0.1\n", "model.lerning_rate", "Extra inputs are not permitted"),
        ("[[challengers]]\nname = 'ctr'\n", "", "model names must differ"),
    ],
)
def test_a_bad_spec_fails_naming_the_field_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, where: str, why: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        load(tmp_path, monkeypatch, "bad.toml", text)
    assert where in str(caught.value) and why in str(caught.value)


def test_a_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEARN_CONFIG", "/nowhere/streamlearn.toml")
    with pytest.raises(ConfigError, match=r"/nowhere/streamlearn\.toml"):
        Settings()


# Every documented environment variable, a value for it, and where that value must land. A name
# the README documents (as STREAMLEARN_NAME, or as a bare NAME in backticks), or a flat name a
# policy answers to, must be here: the tests below prove each one is read.
RULE = '[{"name": "r", "metric": "roc_auc", "window": "5m", "bad": "below", "threshold": 0.5}]'
HOOK = '[{"name": "h", "url": "http://127.0.0.1:9/x", "secret": "s"}]'
ENV: dict[str, tuple[str, Callable[[Settings], Any], Any]] = {
    "KAFKA_BOOTSTRAP": ("k:9093", lambda s: s.kafka_bootstrap, "k:9093"),
    "REDIS_URL": ("redis://r:6380/2", lambda s: s.redis_url, "redis://r:6380/2"),
    "KAFKA_OPTIONS": (
        '{"security.protocol": "SASL_SSL"}',
        lambda s: s.kafka_options,
        {"security.protocol": "SASL_SSL"},
    ),
    "TOPIC_PREFIX": ("shop.", lambda s: s.topic_prefix, "shop."),
    "PARTITIONS": ("6", lambda s: s.partitions, 6),
    "SNAPSHOT_HMAC_KEY": ("k3y", lambda s: s.snapshot_hmac_key.get_secret_value(), "k3y"),
    "ARCHIVE_URL": ("s3://b/p", lambda s: s.archive_url, "s3://b/p"),
    "ARCHIVE_OPTIONS": ('{"region": "eu"}', lambda s: s.archive_options, {"region": "eu"}),
    "CHALLENGERS": ('[{"name": "fm"}]', lambda s: [m.name for m in s.challengers], ["fm"]),
    "MONITOR_LEASE_S": ("30", lambda s: s.monitor.lease_s, 30.0),
    "TRAINER_MODELS": ('["ctr"]', lambda s: s.training.models, ["ctr"]),
    "SNAPSHOT_FULL_EVERY": ("5", lambda s: s.training.full_every, 5),
    "SNAPSHOT_DELTA_MAX_CHANGED": ("0.25", lambda s: s.training.delta_max_changed, 0.25),
    "MODEL__LEARNER__LEARNING_RATE": ("0.05", lambda s: s.model.learner.learning_rate, 0.05),
    "ATTRIBUTION_WINDOW_S": ("45", lambda s: s.join.window_s, 45.0),
    "JOIN__WINDOW_S": ("46", lambda s: s.join.window_s, 46.0),
    "MONITOR__PROMOTION__ENABLED": ("true", lambda s: s.monitor.promotion.enabled, True),
    "ALLOWED_LATENESS_S": ("3", lambda s: s.join.allowed_lateness_s, 3.0),
    "IDLE_TIMEOUT_S": ("11", lambda s: s.join.idle_timeout_s, 11.0),
    "EARLY_OUTCOME_GRACE_S": ("12", lambda s: s.join.early_grace_s, 12.0),
    "POSITIVE_KINDS": ('["purchase"]', lambda s: s.join.positive_kinds, {"purchase"}),
    "COMBINE": ("sum_value", lambda s: s.join.combine, "sum_value"),
    "LATE_POLICY": ("correct", lambda s: s.join.late_policy, "correct"),
    "MATCH_BY_USER_ITEM": ("true", lambda s: s.join.match_by_user_item, True),
    "DEDUP_RETENTION_S": ("60", lambda s: s.join.dedup_retention_s, 60.0),
    "JOINER_TICK_S": ("2", lambda s: s.join.tick_s, 2.0),
    "JOINER_COMMIT_S": ("0.2", lambda s: s.join.commit_s, 0.2),
    "JOINER_STATS_S": ("7", lambda s: s.join.stats_s, 7.0),
    "JOINER_REPARTITION_PURGE_S": ("9", lambda s: s.join.purge_s, 9.0),
    "JOINER_CALL_TIMEOUT_S": ("5", lambda s: s.join.call_timeout_s, 5.0),
    "JOINER_METRICS_PORT": ("0", lambda s: s.join.metrics_port, 0),
    "ARCHIVE_ROLL_ROWS": ("500", lambda s: s.archive.roll_rows, 500),
    "ARCHIVE_ROLL_BYTES": ("4096", lambda s: s.archive.roll_bytes, 4096),
    "ARCHIVE_ROLL_S": ("15", lambda s: s.archive.roll_s, 15.0),
    "ARCHIVER_METRICS_PORT": ("0", lambda s: s.archive.metrics_port, 0),
    "CHECKPOINT_EVERY_N": ("50", lambda s: s.training.checkpoint_every_n, 50),
    "RETENTION_AUTOMATIC": ("false", lambda s: s.retention.automatic, False),
    "RETENTION_KEEP_LAST": ("7", lambda s: s.retention.keep_last, 7),
    "RETENTION_KEEP_WITHIN_HOURLY_S": ("60", lambda s: s.retention.keep_within_hourly_s, 60.0),
    "RETENTION_KEEP_WITHIN_DAILY_S": ("0", lambda s: s.retention.keep_within_daily_s, 0.0),
    "RETENTION_HOT_LAST": ("2", lambda s: s.retention.hot_last, 2),
    "CHECKPOINT_EVERY_S": ("3", lambda s: s.training.checkpoint_every_s, 3.0),
    "CORRECTION_POLICY": ("learn", lambda s: s.training.correction_policy, "learn"),
    "CORRECTION_WEIGHT": ("0.5", lambda s: s.training.correction_weight, 0.5),
    "TRAINER_METRICS_PORT": ("9200", lambda s: s.training.metrics_port, 9200),
    "MONITOR_EVALUATE_S": ("1", lambda s: s.monitor.evaluate_s, 1.0),
    "MONITOR_REFERENCE_SIZE": ("300", lambda s: s.monitor.reference_size, 300),
    "MONITOR_RECOVERY_EXAMPLES": ("30", lambda s: s.monitor.recovery_examples, 30),
    "MONITOR_WARMUP_EXAMPLES": ("0", lambda s: s.monitor.warmup_examples, 0),
    "MONITOR_REFERENCE_RENEW_EXAMPLES": ("9", lambda s: s.monitor.reference_renew_examples, 9),
    "MONITOR_MAX_VERSIONS": ("4", lambda s: s.monitor.max_versions, 4),
    "MONITOR_METRICS_PORT": ("0", lambda s: s.monitor.metrics_port, 0),
    "MONITOR_RULES": (RULE, lambda s: [r.name for r in s.monitor.rules], ["r"]),
    "WEBHOOKS": (HOOK, lambda s: [w.name for w in s.monitor.webhooks], ["h"]),
    "AUTO_ACTION": ("rollback", lambda s: s.monitor.auto_action, "rollback"),
    "AUTO_ACTION_RULES": ('["r"]', lambda s: s.monitor.auto_action_rules, ["r"]),
    "ALERT_LINK": ("http://x/{model}", lambda s: s.monitor.alert_link, "http://x/{model}"),
    "API_HOST": ("0.0.0.0", lambda s: s.api.host, "0.0.0.0"),
    "API_PORT": ("8100", lambda s: s.api.port, 8100),
    "API_ACCESS_LOG": ("false", lambda s: s.api.access_log, False),
    "API_WORKERS": ("2", lambda s: s.api.workers, 2),
    "MAX_CANDIDATES": ("20", lambda s: s.api.max_candidates, 20),
    "MAX_BODY_BYTES": ("2048", lambda s: s.api.max_body_bytes, 2048),
    "MODEL_POLL_S": ("0.5", lambda s: s.api.model_poll_s, 0.5),
    "EXPLORE_EPSILON": ("0", lambda s: s.api.explore_epsilon, 0.0),
    "SHADOW_SHARE": ("0.5", lambda s: s.api.shadow_share, 0.5),
    "ADMIN_KEY": ("adm", lambda s: s.api.admin_key and s.api.admin_key.get_secret_value(), "adm"),
    "SCORING_KEYS": (
        '["a", "b"]',
        lambda s: [k.get_secret_value() for k in s.api.scoring_keys],
        ["a", "b"],
    ),
    "API_BUFFER_MAX": ("9", lambda s: s.api.buffer_max, 9),
    "API_DELIVERY_TIMEOUT_S": ("9", lambda s: s.api.delivery_timeout_s, 9.0),
    "LABEL_MODE": ("fnw", lambda s: s.join.label_mode, "fnw"),
    "OBSERVE_S": ("3", lambda s: s.join.observe_s, 3.0),
    "MATURITY_BUCKETS": ("6", lambda s: s.join.maturity_buckets, 6),
    "DAILY_REPORT_HOUR": ("5", lambda s: s.daily.hour, 5),
    "DAILY_REFERENCE_DAYS": ("3", lambda s: s.daily.reference_days, 3),
    "DAILY_RETRAIN_LOG_LOSS_RATIO": ("1.3", lambda s: s.daily.retrain_log_loss_ratio, 1.3),
    "DAILY_RETRAIN_DAYS": ("2", lambda s: s.daily.retrain_days, 2),
    # The tests run in development mode (conftest): the variable can turn it off.
    "DEV_MODE": ("false", lambda s: s.dev_mode, False),
}
# Read by the CLI, the loop, the failpoints, make and prometheus-client, not by Settings.
NOT_SETTINGS = {"CONFIG", "HOME", "CI", "FAILPOINT", "PROMETHEUS_MULTIPROC_DIR"}


def documented() -> set[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    named = set(re.findall(r"STREAMLEARN_([A-Z][A-Z0-9_]*[A-Z0-9])", readme))
    named |= set(re.findall(r"`([A-Z][A-Z0-9_]*[A-Z0-9])(?:=[^`]*)?`", readme))
    return {n.removeprefix("STREAMLEARN_") for n in named} - NOT_SETTINGS


def test_every_documented_and_flat_name_is_in_the_table() -> None:
    flat = {name.upper() for name in flat_names()}
    assert documented() - ENV.keys() == set()
    assert flat - ENV.keys() == set()


@pytest.mark.parametrize("name", sorted(ENV))
def test_each_environment_variable_lands_where_it_should(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, where, expected = ENV[name]
    default = where(Settings())
    monkeypatch.setenv(f"STREAMLEARN_{name}", raw)
    assert where(Settings()) == expected != default


def test_a_nested_name_and_a_flat_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sections take nested names in the environment and in files; flat names still work, and
    the environment wins over the file whichever form either uses."""
    monkeypatch.setenv("STREAMLEARN_JOIN__IDLE_TIMEOUT_S", "4")
    monkeypatch.setenv("STREAMLEARN_ATTRIBUTION_WINDOW_S", "6")
    text = "attribution_window_s = 9\ndedup_retention_s = 70\n[monitor]\nevaluate_s = 2\n"
    s = load(tmp_path, monkeypatch, "mixed.toml", text)
    assert (s.join.idle_timeout_s, s.join.window_s, s.join.dedup_retention_s) == (4, 6, 70)
    assert s.monitor.evaluate_s == 2
    assert Settings(attribution_window_s=3).join.window_s == 3  # arguments win over all


def test_a_bad_flat_value_names_its_section_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEARN_ATTRIBUTION_WINDOW_S", "-1")
    with pytest.raises(ValidationError, match=r"join\.window_s"):
        Settings()


def test_outside_development_the_development_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="STREAMLEARN_SNAPSHOT_HMAC_KEY is the development key"):
        Settings(dev_mode=False).check_safe()
    with pytest.raises(ConfigError, match="is 0 characters long"):
        Settings(dev_mode=False, snapshot_hmac_key="").check_safe()
    Settings(dev_mode=False, snapshot_hmac_key="0" * 64).check_safe()
    assert Settings(admin_key="").api.admin_key is None  # empty: the admin API stays off
    Settings(dev_mode=True).check_safe()


@pytest.mark.parametrize(
    "command", [["-m", "consumers.trainer"], ["-m", "streamlearn", "registry", "list"]]
)
def test_a_process_refuses_to_start_with_the_development_key(command: list[str]) -> None:
    """Before it connects to anything: no broker or Redis needed to see it refuse."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    ran = subprocess.run(
        [sys.executable, *command],
        env={**env, "STREAMLEARN_DEV_MODE": "false"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode != 0
    assert "STREAMLEARN_SNAPSHOT_HMAC_KEY is the development key" in ran.stdout + ran.stderr


def test_kafka_options_reach_every_kind_of_client() -> None:
    s = Settings(kafka_options={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"})
    for config in (
        client_config(s),
        producer_config(s),
        consumer_config(s, "joiner", **{"enable.partition.eof": True}),
    ):
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "PLAIN"
        assert config["bootstrap.servers"] == s.kafka_bootstrap
    assert consumer_config(s, "joiner")["isolation.level"] == "read_committed"


def test_trainer_models_choose_a_subset_and_its_consumer_group() -> None:
    challengers = [{"name": "fm"}, {"name": "adp"}]
    every = Settings(challengers=challengers)
    assert [m.name for m in every.trained_models] == ["ctr", "fm", "adp"]
    assert every.trainer_group == "trainer"
    some = Settings(challengers=challengers, training={"models": ["adp", "fm"]})
    assert [m.name for m in some.trained_models] == ["fm", "adp"]
    assert some.trainer_group == "trainer.adp+fm"
    assert Settings(challengers=challengers, trainer_models=["ctr"]).trainer_group == "trainer.ctr"
    with pytest.raises(ValidationError, match="not configured: \\['nope'\\]"):
        Settings(challengers=challengers, trainer_models=["ctr", "nope"])
