"""Prometheus for real: Debian's Prometheus (``make prometheus``) with the configuration ``make
observe`` writes, scraping the running loop. promtool accepts the configurations and the rules;
every process is scraped (``up == 1``); every PromQL query of the Grafana dashboard returns data,
and so does every recording rule."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from streamlearn.observability import RULES, scrape_config
from streamlearn.settings import Settings
from tests.conftest import Processes, configure, free_port, wait_until
from tests.integration.test_loop import loop_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamlearn.json"
JOBS = {"api", "joiner", "trainer", "monitor", "archiver"}
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="no prometheus/promtool on PATH: `make prometheus` installs Debian's (make test does)",
)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def recording_rules() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


@needs_prometheus
def test_promtool_accepts_the_configurations_and_the_rules(tmp_path: Path) -> None:
    for config in (ROOT / "deploy" / "prometheus.yml", _written(tmp_path, Settings())):
        done = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"SUCCESS: 1 rule files found" in done.stdout
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True)
    assert done.returncode == 0 and b"SUCCESS" in done.stdout, done.stdout + done.stderr


def _written(where: Path, settings: Settings) -> Path:
    """What ``make observe`` writes, scraping every second."""
    config = where / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(settings, RULES, interval_s=1)))
    return config


@contextlib.contextmanager
def running_prometheus(settings: Settings) -> Iterator[str]:
    """Prometheus on a free port with what ``make observe`` writes; its URL."""
    where = Path(tempfile.mkdtemp(prefix="prometheus-"))
    port = free_port()
    with (where / "log").open("wb") as log:
        server = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={_written(where, settings)}",
                f"--storage.tsdb.path={where / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), "prometheus to be ready")
        yield url
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(where, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready").status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expr: str) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr})
    assert r.status_code == 200, r.text
    result: list[dict[str, object]] = r.json()["data"]["result"]
    return result


@needs_prometheus
def test_every_process_is_scraped_and_every_dashboard_query_returns_data(
    processes: Processes, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(
        processes,
        monkeypatch,
        **{
            **loop_env(env),
            "STREAMLEARN_SIM_RATE": "20",
            "STREAMLEARN_MONITOR_EVALUATE_S": "1",
            "STREAMLEARN_JOINER_STATS_S": "1",
            "STREAMLEARN_ARCHIVE_ROLL_S": "2",
        },
    )
    for name in ("joiner", "trainer", "monitor", "archiver"):
        processes.start(name, "-m", f"consumers.{name}")
    processes.start("api", "-m", "api")
    processes.start("simulator", "-m", "consumers.simulator", "--via-api", "--duration", "600")
    with running_prometheus(settings) as url:
        wait_until(
            lambda: {r["metric"]["job"] for r in query(url, "up == 1")} >= JOBS,  # type: ignore[index]
            "every process scraped",
            timeout=120,
        )
        missing = list(dashboard_queries())
        assert len(missing) == 22

        def answered() -> bool:
            missing[:] = [q for q in missing if not query(url, q)]
            return not missing

        try:
            wait_until(answered, "every dashboard query to return data", timeout=300, every=2)
        except AssertionError:
            raise AssertionError(f"no data for {missing}") from None
        for record in recording_rules():
            wait_until(lambda r=record: bool(query(url, r)), f"the recording rule {record}")
        groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
        alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert {"StreamlearnConceptDrift", "StreamlearnAucFloor", "StreamlearnTargetDown"} <= alerts
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
