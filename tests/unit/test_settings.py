"""Model specs from a TOML or YAML file with environment overrides, and the errors a bad one
gives at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamlearn.errors import ConfigError
from streamlearn.learning import AdPredictorSpec, FactorizationMachineSpec
from streamlearn.settings import Settings

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
    assert s.checkpoint_every_n == 500 and s.model.encoding == "hash"
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
