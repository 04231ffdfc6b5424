"""The web app in a real browser: headless Debian Chromium driven by Selenium, on the micro study.

The micro study is the suite's one real run (tests/conftest.py's ``micro_run``, shared with
tests/test_e2e_micro.py); the app is started as the README says (``python -m diffrep.app``) on a free
local port, and the test drives both tabs. Skipped only where Chromium or its driver is absent and
CI is not set; in CI (CI=true) their absence fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app_server import free_port, get

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]
FINETUNED = "dup_both.instancelevel_blip.none"
TRY_TIMEOUT = 180  # seconds; a limit, not a measurement (bench/run.py measures)


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return ", ".join(missing) or None


MISSING = _browser_missing()
IN_CI = os.environ.get("CI") == "true"
REASON = f"headless browser unavailable (missing {MISSING}): run .ci/setup-system as root"
# Skipped at collection, before the session's micro study would run for nothing; never in CI.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING) and not IN_CI, reason=REASON)]


@pytest.fixture
def browser(tmp_path):
    if MISSING:
        pytest.fail(f"CI=true but {REASON}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def app_url(micro_run, tmp_path):
    """`python -m diffrep.app --study micro` in the micro run's folder, on a free port."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "diffrep.app",
        "--study",
        "micro",
        "--port",
        str(port),
        "--cache",
        str(tmp_path / "cache"),
    ]
    with open(tmp_path / "app.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=micro_run, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while get_or_none(url + "/healthz") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the app did not start:\n{(tmp_path / 'app.log').read_text()}")
            time.sleep(0.2)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def get_or_none(url):
    try:
        return get(url)[0]
    except OSError:
        return None


def _images_loaded(driver, css: str, minimum: int) -> bool:
    """At least `minimum` images match `css`, and every one of them has loaded with a non-zero size."""
    return driver.execute_script(
        "const im=[...document.querySelectorAll(arguments[0])];"
        "return im.length>=arguments[1] && im.every(i=>i.complete && i.naturalWidth>0 && i.naturalHeight>0);",
        css,
        minimum,
    )


def _wait(driver, cond, timeout, what):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: cond(d))
    except Exception:
        text = driver.find_element("tag name", "body").text[:3000]
        raise AssertionError(f"expected: {what} within {timeout} s; page text:\n{text}") from None


def test_both_tabs_in_headless_chromium(browser, app_url, micro_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    results = micro_run / "results/micro"
    before = {str(p): p.stat().st_mtime_ns for p in results.rglob("*")}
    browser.get(app_url)
    assert "micro study" in browser.title
    _wait(
        browser, lambda d: _images_loaded(d, "#browse-a .gallery img", 2), 60, "the first run's gallery loads"
    )

    Select(browser.find_element(By.ID, "b-run")).select_by_value(FINETUNED)
    _wait(
        browser,
        lambda d: (
            FINETUNED in d.find_element(By.ID, "browse-a").text
            and _images_loaded(d, "#browse-a .gallery img", 8)
        ),
        60,
        f"the gallery of {FINETUNED} loads",
    )
    assert "replication threshold" in browser.find_element(By.ID, "browse-a").text
    assert browser.find_elements(By.CSS_SELECTOR, "#browse-a svg polyline"), "no similarity histogram"
    Select(browser.find_element(By.ID, "b-compare")).select_by_value("base")
    _wait(
        browser,
        lambda d: _images_loaded(d, "#browse-b .gallery img", 2),
        60,
        "the compared run's gallery loads",
    )

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=try]").click()
    Select(browser.find_element(By.ID, "t-run")).select_by_value(FINETUNED)
    seed = browser.find_element(By.ID, "t-seed")
    seed.clear()
    seed.send_keys("seven")
    browser.find_element(By.ID, "t-prompt").send_keys("a red circle")
    browser.find_element(By.ID, "t-go").click()
    _wait(
        browser,
        lambda d: "whole number" in d.find_element(By.ID, "try-out").text,
        30,
        "a bad seed is reported",
    )
    seed.clear()
    seed.send_keys("7")
    browser.find_element(By.ID, "t-go").click()
    _wait(
        browser,
        lambda d: _images_loaded(d, "#try-image", 1) and _images_loaded(d, "#try-matches img", 3),
        TRY_TIMEOUT,
        "a typed prompt returns an image and its matches",
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#try-matches tr")
    assert len(rows) == 1 + 3  # header + top_k of tests/micro/config.yaml
    assert "the threshold" in browser.find_element(By.ID, "try-out").text
    prompt = browser.find_element(By.ID, "t-prompt")
    prompt.clear()
    prompt.send_keys("a red circle " * 40)
    browser.find_element(By.ID, "t-go").click()
    _wait(
        browser,
        lambda d: "the rest is cut" in d.find_element(By.ID, "try-out").text,
        TRY_TIMEOUT,
        "an over-long prompt is generated with a note that it was cut",
    )

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=validation]").click()
    Select(browser.find_element(By.ID, "v-run")).select_by_value("base")
    Select(browser.find_element(By.ID, "v-run2")).select_by_value(FINETUNED)
    browser.find_element(By.ID, "v-go").click()
    _wait(
        browser,
        lambda d: _images_loaded(d, "#val-table img", 4 * 2 * 2),
        TRY_TIMEOUT,
        "the validation prompts return two models' images and their top-1 matches",
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#val-table tr")) == 1 + 4  # header + 4 prompts

    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
    assert {str(p): p.stat().st_mtime_ns for p in results.rglob("*")} == before, "the app wrote into results/"
