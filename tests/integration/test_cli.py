"""The registry CLI, as an operator runs it, against the real Redis and an archive directory."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from tests.conftest import ROOT, free_port
from tests.unit.test_api import trained

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlearn", "registry", *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_registry_commands(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = open_store(Settings())
    for v in (1, 2, 3, 4):
        store.put(trained(v))
    registry = Registry(store)

    assert cli(env, "promote", "ctr", "2").returncode == 0
    assert cli(env, "promote", "ctr", "3").returncode == 0
    assert registry.served_version("ctr") == 3
    done = cli(env, "rollback", "ctr")
    assert done.returncode == 0 and "ctr:champion -> v2" in done.stdout
    assert registry.served_version("ctr") == 2
    assert cli(env, "pin", "ctr", "1").returncode == 0
    shown = orjson.loads(cli(env, "show", "ctr", "champion").stdout)
    assert shown["version"] == 2 and "roc_auc" in shown["metrics"]
    kept = cli(env, "retain", "ctr", "--keep-last", "1")
    assert kept.returncode == 0 and "[3]" in kept.stdout
    listing = cli(env, "list", "ctr").stdout
    assert "champion" in listing and "pinned" in listing
    assert [m["version"] for m in registry.versions("ctr")] == [1, 2, 4]

    bad = cli(env, "promote", "ctr", "99")
    assert bad.returncode == 1 and "no version 99" in bad.stdout


def test_redis_down_is_said_and_changes_nothing(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    down = {**env, "STREAMLEARN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for key, value in down.items():
        monkeypatch.setenv(key, value)
    store = open_store(Settings())
    store.archive.put(trained(1))
    listed = cli(down, "list", "ctr")
    assert listed.returncode == 0 and "│ 1 " in listed.stdout  # read from the archive
    failed = cli(down, "promote", "ctr", "1")
    assert failed.returncode == 1 and "Redis did not answer" in failed.stdout
    assert store.archive.read_registry("ctr")["aliases"] == {}
