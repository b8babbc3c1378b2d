"""The registry CLI, as an operator runs it, against the real Redis and an archive directory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamlearn.events import Outcome, Recommendation
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.serving import Served
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from tests.conftest import ROOT, free_port, letters, records
from tests.factories import trained

pytestmark = pytest.mark.integration


def cli(
    env: dict[str, str], *args: str, area: str = "registry"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlearn", area, *args],
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
    assert done.returncode == 0 and "ctr serves ctr:v2" in done.stdout
    assert registry.served_version("ctr") == 2
    # Across names: another model served under ctr, then back.
    store.put(trained(1, spec=ModelSpec(name="fm")))
    across = cli(env, "promote", "ctr", "--from", "fm")
    assert across.returncode == 0 and "ctr serves fm:v1" in across.stdout
    assert registry.serving("ctr") == ("fm", 1)
    assert "serves fm" in cli(env, "list", "ctr").stdout
    assert "ctr serves ctr:v2" in cli(env, "rollback", "ctr").stdout
    assert cli(env, "promote", "ctr").returncode == 1  # its own champion needs a version
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
    assert store.archive.read_registry("ctr").aliases == {}


def test_batch_scoring_of_jsonl_and_parquet_files(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = open_store(Settings())
    store.put(trained(1))
    store.put(trained(2, n=5))
    first = Served("ctr", 1, store.get("ctr", 1).model)
    requests = [
        {"user_id": "u1", "context": {"segment": "likes"}, "items": [{"item_id": "a"}]},
        {
            "user_id": "u2",
            "context": {"segment": "dislikes"},
            "items": [{"item_id": "a", "features": {"p": 1.5}}, {"item_id": "b"}],
        },
        {"user_id": "u3", "items": []},  # invalid: no candidates
    ]
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in requests) + b"\nnot json\n")

    done = cli(env, str(source), str(tmp_path / "scores.parquet"), "--version", "1", area="score")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 requests, 3 candidates scored with ctr:v1, 2 invalid" in done.stdout
    rows = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    scored = [
        (r["row"], r["user_id"], r["item_id"], r["probability"]) for r in rows if not r["error"]
    ]
    expected = [
        (
            n,
            q["user_id"],
            c["item_id"],
            first.score(q["context"], c["item_id"], c.get("features", {})),
        )
        for n, q in enumerate(requests[:2])
        for c in q["items"]
    ]
    assert scored == expected
    assert {r["model_version"] for r in rows} == {1}
    errors = {r["row"]: r["error"] for r in rows if r["error"]}
    assert errors.keys() == {2, 3} and "items" in errors[2] and "not JSON" in errors[3]

    # Parquet in, JSON lines out, with the served version (the latest: 2) by default.
    pq.write_table(pa.Table.from_pylist(requests[:2]), tmp_path / "requests.parquet")
    done = cli(env, str(tmp_path / "requests.parquet"), str(tmp_path / "out.jsonl"), area="score")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [(x["item_id"], x["model_version"]) for x in lines] == [("a", 2), ("a", 2), ("b", 2)]
    assert all(x["explanation"] is None for x in lines)

    # Explained: each candidate's contributions, summing to the logit of its probability.
    out = tmp_path / "explained.parquet"
    done = cli(env, str(source), str(out), "--version", "1", "--explain", area="score")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["explanation"] is None for r in rows] == [False, False, False, True, True]
    for r in rows[:3]:
        why = r["explanation"]
        total = why["bias"] + sum(c["contribution"] for c in why["contributions"])
        assert total == pytest.approx(why["score"], abs=1e-12)
        assert 1 / (1 + math.exp(-why["score"])) == pytest.approx(r["probability"], rel=1e-12)


def test_replay_puts_each_event_on_its_topic_and_a_bad_line_in_the_dead_letters(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    rec = {
        "recommendation_id": "r1",
        "user_id": "u1",
        "event_time": 1.0,
        "items": [{"item_id": "a", "position": 0}],
    }
    out = {
        "recommendation_id": "r1",
        "user_id": "u1",
        "item_id": "a",
        "kind": "click",
        "event_time": 2.0,
    }
    history = tmp_path / "history.jsonl"
    lines = [orjson.dumps(rec), orjson.dumps(out), b'{"user_id": "u2", "kind": "view"}', b""]
    history.write_bytes(b"\n".join(lines))
    done = cli(env, str(history), area="replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 recommendations, 1 outcomes, 1 to the dead-letter topic" in done.stdout
    assert [r.recommendation_id for r in records(s, "recommendations", Recommendation)] == ["r1"]
    assert [o.kind for o in records(s, "outcomes", Outcome)] == ["click"]
    [letter] = letters(s)
    assert letter.source_topic == str(history) and letter.offset == 3 and "item_id" in letter.reason
