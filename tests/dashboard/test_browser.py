"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium): pages load, numbers match Redis, requeue and pause work through the page.

Set KUBEQ_SCREENSHOTS=DIR to save the screenshots used in docs/dashboard.md.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_support import TOKEN, Served
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from kubeq.protocol import TaskError, TaskStatus, WorkerInfo

# Debian's chromium-driver, or a GitHub runner's preinstalled one.
CHROMEDRIVER = shutil.which("chromedriver") or shutil.which(
    "chromedriver", path=os.environ.get("CHROMEWEBDRIVER", "")
)
BROWSER = shutil.which("chromium") or shutil.which("google-chrome")
SHOTS = os.environ.get("KUBEQ_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    # Never skipped: without the browser these tests fail (make setup installs it).
    assert CHROMEDRIVER, "chromedriver not found: apt-get install chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,1500",
    ):
        opts.add_argument(arg)
    if BROWSER:
        opts.binary_location = BROWSER
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def _stat(driver: WebDriver, name: str) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, f"[data-stat='{name}']").text)


def _dead_letter(served: Served, task_type: str, n: int) -> list[str]:
    c = served.client
    ids = c.submit_many([{"type": task_type, "payload": {"n": i}} for i in range(n)])
    claimed = c.claim("browser-test-worker", n).tasks
    err = TaskError(
        type="ValueError",
        message="bad input",
        traceback="Traceback (most recent call last):\n  ...\nValueError: bad input",
    )
    rng = random.Random(1)
    c.settle([c.ops.failure(x, err, c.clock(), rng, permanent=True) for x in claimed])
    return ids


def test_queue_page_numbers_match_redis(browser: WebDriver, dashboard: Served) -> None:
    c = dashboard.client
    c.submit_many([{"type": "telemetry.ingest", "priority": "high"}] * 4)
    c.submit_many([{"type": "report.build"}] * 2)
    c.submit("report.build", delay=600)
    running = c.claim("worker-a", 1).tasks
    held = [(t.id, t.token, t.level_index) for t in running]
    info = WorkerInfo(id="worker-a", pod="telemetry-7d9f-x2k4q", in_flight=1, concurrency=8)
    c.heartbeat("worker-a", held, info)
    c.record_scale({"at": c.clock(), "from": 0, "to": 2, "reason": "backlog 7 > target 5"})
    browser.get(dashboard.url + "/")
    assert "default/default" in browser.find_element(By.CSS_SELECTOR, "table.queues").text
    browser.find_element(By.LINK_TEXT, "default/default").click()
    WebDriverWait(browser, 10).until(ec.url_contains("/q/default/default"))
    stats = c.stats()
    assert _stat(browser, "backlog") == stats.backlog
    assert _stat(browser, "dead") == stats.dead
    assert _stat(browser, "level.high.ready") == stats.levels[0].ready == 3
    assert _stat(browser, "level.high.in_flight") == 1
    assert _stat(browser, "level.default.delayed") == 1
    assert "backlog 7 > target 5" in browser.find_element(By.CSS_SELECTOR, "table.scale").text
    workers = browser.find_element(By.CSS_SELECTOR, "table.workers").text
    assert "worker-a telemetry-7d9f-x2k4q 1/8 serving" in workers
    assert workers.endswith("telemetry.ingest")  # what that worker runs
    types = browser.find_element(By.CSS_SELECTOR, "table.types").text
    assert "telemetry.ingest 4 0 0 0 0" in types
    # The page's script refreshes the numbers from the JSON endpoint.
    c.submit_many([{"type": "telemetry.ingest", "priority": "high"}] * 5)
    WebDriverWait(browser, 12).until(lambda d: _stat(d, "level.high.ready") == 8)
    _shot(browser, "queue")
    # The worker's running task links to that task's page.
    browser.find_element(By.CSS_SELECTOR, "table.workers a").click()
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.ID, "task-state")))
    assert browser.find_element(By.ID, "task-state").text == "running"
    assert running[0].id in browser.title


def test_task_search_and_detail(browser: WebDriver, dashboard: Served) -> None:
    (dead,) = _dead_letter(dashboard, "report.build", 1)
    browser.get(dashboard.url + "/q/default/default/tasks?state=dead")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
    assert len(rows) == dashboard.client.stats().dead == 1
    browser.find_element(By.LINK_TEXT, dead).click()
    state_is_dead = ec.text_to_be_present_in_element((By.ID, "task-state"), "dead")
    WebDriverWait(browser, 10).until(state_is_dead)
    assert "ValueError: bad input" in browser.find_element(By.ID, "task-error").text
    assert "Traceback" in browser.find_element(By.CSS_SELECTOR, "pre.traceback").text
    _shot(browser, "task")


def test_hostile_payload_is_shown_as_text_and_runs_nothing(
    browser: WebDriver, dashboard: Served
) -> None:
    c = dashboard.client
    tid = c.submit("t", {"x": "<script>alert('pwned')</script><img src=x onerror=alert(2)>"})
    browser.get(f"{dashboard.url}/q/default/default/task/{tid}")
    assert "<script>alert('pwned')</script>" in browser.find_element(By.TAG_NAME, "pre").text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no alert ran
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []


def test_requeue_and_pause_through_the_page(browser: WebDriver, dashboard: Served) -> None:
    c = dashboard.client
    a = _dead_letter(dashboard, "a.type", 2)
    b = _dead_letter(dashboard, "b.type", 1)
    browser.get(dashboard.url + "/q/default/default/tasks?state=dead")
    _shot(browser, "dead")
    form = browser.find_element(By.ID, "requeue-form")
    form.find_element(By.NAME, "type").send_keys("a.type")
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.ID, "flash")))
    assert "requeued 2 task(s)" in browser.find_element(By.ID, "flash").text
    assert {c.status(x).status for x in a} == {TaskStatus.PENDING}
    assert c.status(b[0]).status == TaskStatus.DEAD

    browser.get(dashboard.url + "/q/default/default")
    # The token is remembered for the tab after the first action.
    browser.find_element(By.XPATH, "//form[contains(@action,'/pause')]//button").click()
    WebDriverWait(browser, 10).until(ec.text_to_be_present_in_element((By.ID, "paused"), "PAUSED"))
    assert c.stats().paused is True
    assert c.claim("w", 10).tasks == []
    _shot(browser, "paused")
    browser.find_element(By.XPATH, "//form[contains(@action,'/resume')]//button").click()
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.ID, "paused"), "claiming")
    )
    assert c.stats().paused is False


def test_a_wrong_token_changes_nothing(browser: WebDriver, dashboard: Served) -> None:
    browser.get(dashboard.url + "/q/default/default")
    browser.execute_script("sessionStorage.clear()")
    browser.get(dashboard.url + "/q/default/default")
    form = browser.find_element(By.XPATH, "//form[contains(@action,'/pause')]")
    token = form.find_element(By.NAME, "token")
    token.clear()
    token.send_keys("wrong-token-wrong-token")
    form.find_element(By.TAG_NAME, "button").click()
    # The refusal is a new page: wait for it rather than read the old one mid-navigation.
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.ID, "error"), "Wrong or missing token")
    )
    assert dashboard.client.stats().paused is False
