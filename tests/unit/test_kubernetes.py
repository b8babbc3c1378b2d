"""The Kubernetes manifests (deploy/kubernetes): valid against the Kubernetes schemas, and
wired to what streamlearn reads. They have not run on a cluster here."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamlearn.settings import Settings, flat_names

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "streamlearn.yaml"
KUBERNETES = "1.30.0"  # the oldest minor release still supported upstream
KNOWN = set(Settings.model_fields) | set(flat_names())


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    docs = documents()
    assert docs
    for doc in docs:
        # Strict: a misspelt field is an error, not ignored.
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_deployment_per_process_and_the_api_behind_a_service_ready_on_readyz() -> None:
    docs = documents()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    commands = {
        c["command"][-1]
        for d in deployments.values()
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert commands == {
        "consumers.joiner",
        "consumers.trainer",
        "consumers.monitor",
        "consumers.archiver",
        "consumers.reporter",
        "api",
    }
    for module in commands:
        assert importlib.util.find_spec(module) is not None, module
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), d["metadata"]
    [api] = deployments["streamlearn-api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["selector"].items() <= (
        deployments["streamlearn-api"]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert deployments["streamlearn-monitor"]["spec"]["replicas"] == 2  # one acts, one stands by


def test_the_configuration_they_give_is_streamlearns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process's environment (the ConfigMap, its own variables, and the secret's names
    with stand-in values) is settings streamlearn accepts, with TRAINER_MODELS covering every
    configured model once."""
    docs = documents()
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    secret = {
        "STREAMLEARN_SNAPSHOT_HMAC_KEY": "k" * 64,
        "STREAMLEARN_ADMIN_KEY": "a" * 32,
        "STREAMLEARN_REDIS_URL": "redis://:p@redis:6379/0",
    }
    trained: list[str] = []
    for d in (d for d in docs if d["kind"] == "Deployment"):
        [container] = d["spec"]["template"]["spec"]["containers"]
        own = {e["name"]: e["value"] for e in container.get("env", [])}
        env = {**config["data"], **secret, **own}
        # A misspelt name would be ignored by the settings: each must be one they read.
        for key in env:
            name = key.removeprefix("STREAMLEARN_").lower()
            assert name in KNOWN or name.split("__")[0] in Settings.model_fields, key
        for key in [k for k in os.environ if k.startswith("STREAMLEARN_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        settings.check_safe()  # no development key, no development mode
        assert settings.partitions == 12 and settings.api.host == "0.0.0.0"
        if container["command"][-1] == "consumers.trainer":
            trained += [m.name for m in settings.trained_models]
    assert sorted(trained) == sorted(m.name for m in Settings().models)
