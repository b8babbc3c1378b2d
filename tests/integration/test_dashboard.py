"""The dashboard in headless Chromium (Debian's, through its ChromeDriver) on the real broker and
Redis: the charts fill, promote and rollback buttons move the served version, and a drift fires
and resolves on screen. Once against an API and monitor fed with known examples, once against the
whole running loop. The screenshots taken after the resolve are kept in ``test-artifacts/``
(``dashboard.png``, ``dashboard-loop.png``)."""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from streamlearn.clock import ManualClock
from streamlearn.simulation import Deployed
from streamlearn.snapshots import open_store
from tests.conftest import (
    ARTIFACTS,
    NEEDS_BROWSER,
    Processes,
    configure,
    produce_examples,
    served_version,
    wait_until,
)
from tests.factories import trained

pytestmark = [
    pytest.mark.integration,
    NEEDS_BROWSER,
]

ADMIN = "dash-admin"
SCORING = "dash-scoring"


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_the_dashboard_fills_shows_a_drift_and_follows_promote_and_rollback(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, browser: WebDriver
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_ADMIN_KEY=ADMIN,
        STREAMLEARN_SCORING_KEYS=f'["{SCORING}"]',
        STREAMLEARN_MONITOR_EVALUATE_S="1",
        STREAMLEARN_MONITOR_RECOVERY_EXAMPLES="3000",
        STREAMLEARN_MONITOR_REFERENCE_RENEW_EXAMPLES="10000",
    )
    store = open_store(s)
    made = time.time() - 600
    store.put(dataclasses.replace(trained(1), created_at=made))
    # v2 learned on from v1:
    store.put(dataclasses.replace(trained(2, n=100), parent_version=1, created_at=made + 60))
    world = Deployed(ManualClock(1_700_000_000.0))  # a served model that learns as it goes

    def send(n: int) -> None:
        produce_examples(s, world.examples(n))

    send(12_000)
    processes.start("monitor", "-m", "consumers.monitor")
    processes.start("api", "-m", "api")
    base = f"http://127.0.0.1:{s.api.port}"
    wait_until(lambda: served_version(base) == 2, "the API to serve the newest version")

    browser.get(f"{base}/dashboard")
    # With scoring keys set, the monitor's figures need one: the page asks for it, then sends it.
    wait_until(lambda: "enter a scoring key" in text(browser, "updated"), "the page to ask")
    browser.find_element(By.ID, "scoring-key").send_keys(SCORING + "\n")
    wait_until(lambda: "ctr:v1" in text(browser, "auc"), "the AUC chart to fill")
    assert "ctr served" in text(browser, "auc")
    assert "ctr lower" in text(browser, "auc")  # the served AUC's 95% band
    assert browser.find_elements(By.CSS_SELECTOR, "#auc canvas")  # drawn by uPlot
    assert "recommendation_rate" not in text(browser, "auc")
    assert "serving: ctr v2" in text(browser, "served")
    hover_shows_a_value(browser)
    # A click on a legend entry hides its series, and a second shows it again.
    shown = "return plots.auc.u.series.find(s => s.label === 'ctr served').show"
    entry = "#auc .u-legend .u-series:nth-child(2) .u-label"
    for want in (False, True):
        browser.find_element(By.CSS_SELECTOR, entry).click()
        wait_until(lambda w=want: browser.execute_script(shown) is w, f"the series shown: {want}")

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
    wait_until(lambda: "API requests" in text(browser, "requests"), "the request rate")
    # The drift's fire and resolve marked on every chart's time axis, saying what they mark.
    wait_until(lambda: marked_everywhere(browser, "fire"), "the fire marked on every chart")
    wait_until(lambda: marked_everywhere(browser, "resolve"), "the resolve marked on every chart")
    titles = [title for _, title in marks(browser, "fire")]
    assert any("firing ctr/concept-drift/stream" in t for t in titles), titles

    browser.find_element(By.ID, "key").send_keys(ADMIN + "\n")
    assert sorted(_listing(browser, at_least=2)) == [1, 2]
    promote_on_page(browser, base, 1)
    promote_on_page(browser, base, 2)
    wait_until(lambda: _click(browser, "#rollback"), "the rollback button")
    wait_until(lambda: served_version(base) == 1, "the API to serve v1 again")
    wait_until(
        lambda: "rolled back to ctr v1" in text(browser, "admin-status"), "the page to say so"
    )
    # The promotions and the rollback marked too, labeled with the version each named.
    wait_until(lambda: marked_everywhere(browser, "rollback"), "the rollback on every chart")
    labels = [label for label, _ in marks(browser, "promote") + marks(browser, "rollback")]
    assert {"promoted v1", "promoted v2", "rolled back v1"} <= set(labels), labels
    screenshot(browser, "dashboard.png")

    # Zoom: a drag across one chart narrows every chart's time axis; a double click restores.
    before = axis_span(browser, "auc")
    over = browser.find_element(By.CSS_SELECTOR, "#auc .u-over")
    ActionChains(browser).move_to_element_with_offset(
        over, -100, 0
    ).click_and_hold().move_by_offset(120, 0).release().perform()
    wait_until(lambda: axis_span(browser, "loss") < before / 2, "every chart zoomed")
    assert browser.find_element(By.ID, "unzoom").is_displayed()
    ActionChains(browser).double_click(over).perform()
    wait_until(lambda: axis_span(browser, "loss") >= before * 0.9, "the whole history again")

    # The model page: the lineage, and v1 and v2 compared as the admin API compares them.
    browser.get(f"{base}/models/ctr")  # the admin key is the tab's: no need to enter it again
    wait_until(lambda: "└ v2" in text(browser, "lineage").replace("\n", " "), "the lineage")
    rows = browser.find_elements(By.CSS_SELECTOR, "#lineage tr[data-version]")
    assert [r.get_attribute("data-version") for r in rows] == ["2", "1"]  # newest first
    assert "champion" in rows[1].text and "(served)" in rows[1].text  # v1, after the rollback
    wait_until(
        lambda: "i:" in text(browser, "weights") or "item" in text(browser, "weights"), "weights"
    )
    browser.find_element(By.ID, "compare").click()
    wait_until(lambda: "v1" in text(browser, "compare-title"), "the comparison")
    api = httpx.get(
        f"{base}/v1/models/ctr/compare",
        params={"a": 1, "b": 2, "top": 15},
        headers={"X-API-Key": ADMIN},
        timeout=10,
    ).json()
    shown = browser.find_elements(By.CSS_SELECTOR, "#moved tr td:first-child")
    assert [cell.text for cell in shown] == [m["feature"] for m in api["moved"]]
    assert "samples seen" in text(browser, "compare-metrics")
    assert "100" in text(browser, "compare-metrics") and "200" in text(browser, "compare-metrics")
    screenshot(browser, "model.png")


def screenshot(driver: WebDriver, name: str) -> None:
    """The whole page, from its top, kept in ``test-artifacts/``."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, min(height + 150, 5000))
    time.sleep(1)  # the charts take their new widths
    shot = ARTIFACTS / name
    try:
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.set_window_size(1400, 1400)


def marks(driver: WebDriver, kind: str) -> list[tuple[str, str]]:
    """The label and the hover text (title) of every ``kind`` mark on the page, read at once
    (the page redraws them every poll)."""
    found = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(m => [m.textContent, m.title]);",
        f".chart .mark.{kind}",
    )
    return [(str(label), str(title)) for label, title in found]


def marked_everywhere(driver: WebDriver, kind: str) -> bool:
    """Every chart drawn (those with data: four at least) marks ``kind`` once at least."""
    try:
        charts = driver.find_elements(By.CSS_SELECTOR, ".chart .uplot")
        return len(charts) >= 4 and all(
            c.find_elements(By.CSS_SELECTOR, f".mark.{kind}") for c in charts
        )
    except StaleElementReferenceException:  # redrawn meanwhile
        return False


def axis_span(driver: WebDriver, chart: str) -> float:
    """The seconds a chart's time axis spans (uPlot's x scale)."""
    return float(
        driver.execute_script(f"const x = plots[{chart!r}].u.scales.x; return x.max - x.min;")
    )


def hover_shows_a_value(driver: WebDriver) -> None:
    """The pointer over a chart: the legend gives the time under it and the served series' value
    then, on that chart and (the cursor is shared) on the others; a screenshot keeps it."""
    wait_until(
        lambda: driver.execute_script("return plots.auc.u.data[0].length") >= 5,
        "five points on the AUC chart",
    )
    over = driver.find_element(By.CSS_SELECTOR, "#auc .u-over")

    def legend(chart: str) -> tuple[str, str]:
        """The legend's time and its served series' value."""
        cells = driver.find_elements(By.CSS_SELECTOR, f"#{chart} .u-legend .u-series .u-value")
        return cells[0].text, cells[1].text

    shown: dict[int, tuple[str, str]] = {}
    for offset in (-over.size["width"] // 2 + 3, over.size["width"] // 2 - 3):
        ActionChains(driver).move_to_element_with_offset(over, offset, 0).perform()
        wait_until(lambda: re.fullmatch(r"0\.\d+", legend("auc")[1]) is not None, "a value")
        shown[offset] = legend("auc")
        assert re.fullmatch(r"\d\.\d+", legend("loss")[1]), legend("loss")  # the shared cursor
    first, last = shown.values()
    assert first[0] != last[0], shown  # the time under the pointer, not the newest
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "dashboard-hover.png"))
    ActionChains(driver).move_by_offset(0, 400).perform()  # away again


# Counted in impressions the API ranked, as the monitor's warm-up (10,000 served examples) is: a
# flip at a time came 10 s after its end on a slow machine and a minute after on a fast one,
# where a rise of the served loss as the model learned had that much longer to page first.
# Counted alike, the flip reaches the monitor ~1,000 examples (5 to 10 s) after its warm-up.
FLIP_AFTER = 12_500


def test_the_dashboard_of_the_running_loop_shows_learning_a_drift_and_follows_the_buttons(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, browser: WebDriver, tmp_path: Path
) -> None:
    """The README's main job (``consumers.loop``: joiner, trainer, monitor, API and a storefront
    that ranks through the API), with the preferences flipped after 12,500 impressions."""
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_HOME=str(tmp_path),  # the loop's process logs
        STREAMLEARN_PARTITIONS="1",
        STREAMLEARN_ADMIN_KEY=ADMIN,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="5",
        STREAMLEARN_SIM_MEAN_DELAY_S="1",
        STREAMLEARN_MONITOR_EVALUATE_S="1",
    )
    processes.start("loop", "-m", "consumers.loop", "--flip-after", str(FLIP_AFTER))
    base = f"http://127.0.0.1:{s.api.port}"
    wait_until(
        lambda: served_version(base) is not None, "the API to serve the trainer's first version"
    )

    browser.get(f"{base}/dashboard")
    wait_until(lambda: "ctr served" in text(browser, "auc"), "the AUC chart to fill")
    wait_until(lambda: bool(re.search(r"ctr:v\d+", text(browser, "auc"))), "a version's line")
    wait_until(lambda: _served_auc(base) > 0.6, "the served model to learn (5 min AUC > 0.6)")
    wait_until(lambda: "example_rate" in text(browser, "throughput"), "the join's rates")

    # The flip: the served loss rises, the alarm fires; the trainer relearns and it resolves.
    simulator_log = tmp_path / "logs" / "simulator.log"
    wait_until(lambda: "preferences flipped" in simulator_log.read_text(), "the flip", timeout=600)
    flipped_at = time.time()
    drift = "ctr/concept-drift/stream"
    wait_until(lambda: ("firing", drift) in _alerts(base, flipped_at), "the drift", timeout=600)
    wait_until(lambda: f"firing {drift}" in text(browser, "alarms"), "the drift alarm on screen")
    wait_until(lambda: ("resolved", drift) in _alerts(base, flipped_at), "its resolve", timeout=600)
    wait_until(lambda: f"resolved {drift}" in text(browser, "alarms"), "the resolve on screen")
    # None before the flip (the model learning is no drift), and the flip's incident paged
    # once each way. A later rise of the served loss, as the loop's model goes on changing, is
    # an incident of its own (seen once in CI, two minutes after the first had resolved).
    recent = httpx.get(f"{base}/v1/monitor?minutes=1&points=10", timeout=5).json()
    pages = [
        (a["at"], a["status"]) for a in reversed(recent["recent_alerts"]) if a["dedup_key"] == drift
    ]
    paged = [status for at, status in pages if at >= flipped_at]
    assert len(paged) == len(pages) and paged[:2] == ["firing", "resolved"], pages
    assert all(a != b for a, b in itertools.pairwise(paged)), paged  # never twice in a row
    wait_until(lambda: "none firing" in text(browser, "alarms"), "no alarm open", timeout=600)
    wait_until(lambda: _served_auc(base) > 0.6, "the relearned model's AUC on the 5 min chart")
    screenshot(browser, "dashboard-loop.png")

    # Promote two of the trainer's versions from the page, then roll back to the first.
    browser.find_element(By.ID, "key").send_keys(ADMIN + "\n")
    listed = _listing(browser, at_least=3)
    wait_until(lambda: "ctr-fm (challenger" in text(browser, "versions"), "the loop's challenger")
    older, newer = min(listed), max(listed)
    for version in (older, newer):
        promote_on_page(browser, base, version)
    wait_until(lambda: _click(browser, "#rollback"), "click")
    wait_until(lambda: served_version(base) == older, f"the API to serve v{older} again")
    wait_until(
        lambda: f"rolled back to ctr v{older}" in text(browser, "admin-status"),
        "the page to say so",
    )
    assert processes.running["loop"].poll() is None, processes.log("loop")


def promote_on_page(driver: WebDriver, base: str, version: int) -> None:
    button = f'button.promote[data-model="ctr"][data-version="{version}"]'
    wait_until(lambda: _click(driver, button), f"the promote button of v{version}")
    wait_until(lambda: served_version(base) == version, f"the API to serve the promoted v{version}")
    wait_until(lambda: f"serving: ctr v{version}" in text(driver, "served"), "the page to follow")


def _listing(driver: WebDriver, at_least: int) -> list[int]:
    found: list[int] = []

    def enough() -> bool:
        found[:] = _listed(driver)
        return len(found) >= at_least

    wait_until(enough, "the versions table")
    return found


def _listed(driver: WebDriver) -> list[int]:
    """The served model's versions in the page's table."""
    try:
        buttons = driver.find_elements(By.CSS_SELECTOR, 'button.promote[data-model="ctr"]')
        return [int(b.get_attribute("data-version") or 0) for b in buttons]
    except StaleElementReferenceException:  # the table was redrawn meanwhile
        return []


def _click(driver: WebDriver, selector: str) -> bool:
    try:
        driver.find_element(By.CSS_SELECTOR, selector).click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


def _alerts(base: str, since: float) -> list[tuple[str, str]]:
    """(status, dedup key) of the recent alerts made after ``since``, oldest first."""
    try:
        recent = httpx.get(f"{base}/v1/monitor?minutes=1&points=10", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return []
    alerts = reversed(recent["recent_alerts"])
    return [(a["status"], a["dedup_key"]) for a in alerts if a["at"] >= since]


def _served_auc(base: str) -> float:
    try:
        current = httpx.get(f"{base}/v1/monitor?minutes=1&points=10", timeout=2).json()["current"]
        return float(current["models"]["ctr"]["windows"]["5m"]["roc_auc"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return 0.0
