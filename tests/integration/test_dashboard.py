"""The dashboard in headless Chromium (Debian's, through its ChromeDriver) against a running
API and monitor on the real broker and Redis: the charts fill, promote and rollback buttons move
the served version, and a drift fires and resolves on screen. The screenshot taken after the
resolve is kept in ``test-artifacts/dashboard.png``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from streamlearn.clock import ManualClock
from streamlearn.registry import Registry
from streamlearn.simulation import Deployed
from streamlearn.snapshots import open_store
from tests.conftest import ROOT, Processes, configure, produce, wait_until
from tests.unit.test_api import trained

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium and chromium-driver (make browser installs them)",
    ),
]

ADMIN = "dash-admin"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1400",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_the_dashboard_fills_follows_promote_and_rollback_and_shows_a_drift(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, browser: WebDriver
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_ADMIN_KEY=ADMIN,
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR_RECOVERY_EXAMPLES="3000",
    )
    store = open_store(s)
    for v in (1, 2):
        store.put(trained(v))
    Registry(store).promote("ctr", 1)
    world = Deployed(ManualClock(1_700_000_000.0))
    topic = s.topic("examples")

    def send(n: int) -> None:
        examples = world.examples(n)
        produce(s, [(topic, e.user_id.encode(), e.model_dump_json().encode()) for e in examples])

    send(12_000)
    processes.start("monitor", "-m", "consumers.monitor")
    processes.start("api", "-m", "api")
    base = f"http://127.0.0.1:{s.api_port}"
    wait_until(lambda: _served(base) == 1, "the API to serve v1")

    browser.get(f"{base}/dashboard")
    wait_until(lambda: "ctr:v1" in text(browser, "auc-legend"), "the AUC chart to fill")
    assert browser.find_elements(By.CSS_SELECTOR, "#auc polyline")
    assert "recommendation_rate" not in text(browser, "auc-legend")
    assert "serving: ctr v1" in text(browser, "served")

    browser.find_element(By.ID, "key").send_keys(ADMIN + "\n")
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "button.promote")) == 2,
        "the versions table",
    )
    browser.find_element(By.CSS_SELECTOR, 'button.promote[data-version="2"]').click()
    wait_until(lambda: _served(base) == 2, "the API to serve the promoted v2")
    wait_until(lambda: "serving: ctr v2" in text(browser, "served"), "the page to follow")
    browser.find_element(By.ID, "rollback").click()
    wait_until(lambda: _served(base) == 1, "the API to serve v1 again")
    wait_until(lambda: "rolled back to v1" in text(browser, "admin-status"), "the page to say so")

    world.shop.flip()
    send(3_000)
    wait_until(lambda: "concept-drift" in text(browser, "alarms"), "the drift alarm on screen")
    send(27_000)
    wait_until(
        lambda: "resolved ctr/concept-drift/stream" in text(browser, "alarms"),
        "the resolve among the recent alerts",
    )
    wait_until(lambda: "none firing" in text(browser, "alarms"), "no alarm open on screen")
    assert "firing ctr/concept-drift/stream" in text(browser, "alarms")  # and its page before
    wait_until(lambda: "API requests" in text(browser, "requests-legend"), "the request rate")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def _served(base: str) -> int | None:
    try:
        version = httpx.get(f"{base}/healthz", timeout=2).json()["model_version"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return int(version) if version is not None else None
