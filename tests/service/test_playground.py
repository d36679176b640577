"""The playground page in a real headless Chromium, against a real server: for every model
of the store, the page loads without console errors, draws the API's sample grid for a
seed, scores a drawn digit (a posterior summing to 1), completes a masked image; axe-core
finds no serious accessibility violation; the page fits a phone's width. Screenshots of
each step go to reports/playground/ (the CI artifacts)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.servers import uvicorn_server

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "reports" / "playground"
AXE = sorted((ROOT / ".cache").glob("axe-core-*/axe.min.js"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MODELS = ["flow-digits", "vae-digits", "gan-digits", "pixelcnn-digits", "diffusion-digits"]

# `make test` installs Chromium and fetches axe-core (deploy/test-tools.sh) and sets this,
# so CI fails rather than skips when they are missing; a bare `pytest` skips. (Not a
# GENSERVE_ variable: the server refuses unknown ones as typos.)
REQUIRED = os.environ.get("BROWSER_TESTS") == "required"
if not (CHROMIUM and DRIVER and AXE):
    why = "needs chromium, chromium-driver and axe-core (bash deploy/test-tools.sh)"
    if REQUIRED:
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tiny_store: Path) -> Iterator[str]:
    with uvicorn_server(tiny_store) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    """Waits for `condition`; on a timeout, says what the page showed (its error box and
    console), which a bare TimeoutException does not."""
    try:
        return WebDriverWait(browser, timeout).until(condition)
    except TimeoutException:
        error = browser.find_elements(By.ID, "error")
        shown = error[0].text if error and error[0].is_displayed() else "(no error shown)"
        busy = browser.find_element(By.TAG_NAME, "body").get_attribute("aria-busy")
        console = [e["message"] for e in browser.get_log("browser")]
        focus = browser.execute_script("return document.activeElement && document.activeElement.id")
        scored = browser.find_element(By.ID, "score-out").text
        pytest.fail(
            f"page did not get there in {timeout} s; busy={busy}; error box: {shown}; "
            f"console: {console}; focus: {focus!r}; score output: {scored!r}"
        )


def settle(browser: Any) -> None:
    """Waits until every action the page started has drawn its answer (aria-busy cleared):
    a check that holds already before an action ends (the same grid again) would otherwise
    race the next one."""
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("aria-busy") is None)


def console_errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def shot(browser: Any, name: str) -> None:
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def open_page(browser: Any, server: str, model: str) -> None:
    browser.get(f"{server}/")  # the root leads to the page
    wait(browser, lambda b: len(Select(b.find_element(By.ID, "model")).options) == len(MODELS))
    settle(browser)
    select = Select(browser.find_element(By.ID, "model"))
    index = next(i for i, o in enumerate(select.options) if o.text.startswith(model + " "))
    select.select_by_index(index)
    wait(browser, lambda b: b.find_element(By.ID, "facts").get_attribute("data-model") == model)
    settle(browser)


def image_bytes(browser: Any, element_id: str) -> bytes:
    """The bytes behind an <img>'s blob URL, read in the page."""
    encoded = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(document.getElementById(arguments[0]).src).then(r => r.arrayBuffer()).then(buf => {
          let s = ""; const a = new Uint8Array(buf);
          for (let i = 0; i < a.length; i++) s += String.fromCharCode(a[i]);
          done(btoa(s));
        });""",
        element_id,
    )
    return base64.b64decode(encoded)


@pytest.mark.parametrize("model", MODELS)
def test_the_page_samples_scores_and_completes(browser: Any, server: str, model: str) -> None:
    browser.get_log("browser")  # forget earlier tests' messages
    open_page(browser, server, model)
    shot(browser, f"{model}-1-loaded")

    # Sample: the grid is the API's PNG for the same request and seed; the seed repeats.
    for field, value in (("labels", "3,1,4"), ("n", "3"), ("seed", "7")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "sample").click()
    wait(browser, lambda b: b.find_element(By.ID, "grid").get_attribute("data-seed") == "7")
    shown = image_bytes(browser, "grid")
    api = httpx.post(
        f"{server}/sample",
        json={"model": model, "n": 3, "labels": [3, 1, 4], "seed": 7, "format": "png"},
    )
    assert shown == api.content
    browser.find_element(By.ID, "seed").clear()
    browser.find_element(By.ID, "again").click()  # same seed again: the same grid
    settle(browser)
    assert image_bytes(browser, "grid") == shown
    shot(browser, f"{model}-2-sampled")

    score_button = browser.find_element(By.ID, "score")
    if model == "gan-digits":  # no likelihood, no encoder: the buttons say so
        assert not score_button.is_enabled()
        assert not browser.find_element(By.ID, "complete").is_enabled()
        assert console_errors(browser) == []
        return

    # Score a digit drawn with the keyboard: a vertical stroke, a "1".
    canvas = browser.find_element(By.ID, "canvas")
    canvas.click()
    keys = webdriver.ActionChains(browser)
    keys.send_keys(webdriver.Keys.ARROW_RIGHT * 3)
    for _ in range(6):
        keys.send_keys(webdriver.Keys.SPACE, webdriver.Keys.ARROW_DOWN)
    keys.perform()
    # The click focused the canvas, so the keys drew there (sent anywhere else, Space would
    # press the last button clicked, "same seed again", and the page would sample instead).
    assert browser.execute_script("return document.activeElement.id") == "canvas"
    inked = browser.execute_script("return state.image[0].flat().filter((v) => v > 0).length")
    assert inked >= 4  # the click's cell and the keyboard's stroke
    score_button.click()
    bars = wait(browser, ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#posterior .bar")))
    total = sum(float(b.get_attribute("data-p")) for b in bars)
    assert len(bars) == 10 and abs(total - 1.0) < 1e-6
    assert "bits/dim" in browser.find_element(By.ID, "ll").text
    assert browser.find_elements(By.CSS_SELECTOR, "#outliers tr")
    shot(browser, f"{model}-3-scored")

    # Complete: a test digit with its bottom half erased (marked missing) by pointer strokes.
    Select(browser.find_element(By.ID, "example")).select_by_value("8")
    settle(browser)  # the test digit is fetched: strokes before it lands would be drawn over
    browser.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="erase"]').click()
    size = canvas.size
    strokes = webdriver.ActionChains(browser)
    for row in range(4):
        y = int(size["height"] * (4.5 + row) / 8) - size["height"] // 2
        strokes.move_to_element_with_offset(canvas, -size["width"] // 2 + 2, y).click_and_hold()
        strokes.move_by_offset(size["width"] - 4, 0).release()
    strokes.perform()
    browser.find_element(By.ID, "complete").click()
    info = wait(browser, ec.presence_of_element_located((By.ID, "complete-info")))
    assert "Class used" in info.text and "inferred" in info.text  # no labels given
    shot(browser, f"{model}-4-completed")
    assert console_errors(browser) == []


def test_the_last_model_chosen_wins_when_answers_cross(browser: Any, server: str) -> None:
    open_page(browser, server, "flow-digits")
    # Three choices in one task: their detail answers are in flight together and may land
    # in any order; the facts and the canvas must be the last choice's.
    browser.execute_script(
        """const select = document.getElementById("model");
        for (const name of arguments[0]) {
          select.value = [...select.options].find((o) => o.text.startsWith(name + " ")).value;
          select.dispatchEvent(new Event("change"));
        }""",
        ["pixelcnn-digits", "vae-digits", "gan-digits"],
    )
    settle(browser)
    assert browser.find_element(By.ID, "facts").get_attribute("data-model") == "gan-digits"
    assert not browser.find_element(By.ID, "score").is_enabled()


def test_api_errors_are_shown_as_the_api_words_them(browser: Any, server: str) -> None:
    open_page(browser, server, "vae-digits")
    box = browser.find_element(By.ID, "labels")
    box.clear()
    box.send_keys("not-a-class")
    browser.find_element(By.ID, "sample").click()
    error = wait(browser, ec.visibility_of_element_located((By.ID, "error")))
    assert "422" in error.text and "labels" in error.text
    shot(browser, "error")


def test_no_serious_accessibility_violations_and_a_phone_fits(browser: Any, server: str) -> None:
    open_page(browser, server, "pixelcnn-digits")
    browser.execute_script(AXE[-1].read_text())
    result = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; axe.run(document).then(r => done(r.violations));"
    )
    serious = [(v["id"], v["impact"], v["help"]) for v in result if v["impact"] in ("serious", "critical")]
    assert serious == []
    browser.set_window_size(390, 844)  # a phone
    try:
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        shot(browser, "phone")
        assert overflow <= 0
    finally:
        browser.set_window_size(1200, 1000)


def test_the_page_is_small_and_public(server: str) -> None:
    # No data in it: a browser loads it before it has a token to send.
    static = ROOT / "service" / "playground" / "static"
    total = sum(p.stat().st_size for p in static.iterdir())
    assert total < 64_000
    assert httpx.get(f"{server}/playground/static/playground.js").status_code == 200


@pytest.fixture(scope="module")
def vector_server(vector_store: Path) -> Iterator[str]:
    with uvicorn_server(vector_store) as url:
        yield url


def test_a_posterior_for_an_observation(browser: Any, vector_server: str) -> None:
    browser.get_log("browser")
    browser.get(f"{vector_server}/playground/")
    wait(browser, lambda b: len(Select(b.find_element(By.ID, "model")).options) >= 1)
    select = Select(browser.find_element(By.ID, "model"))
    index = next(i for i, o in enumerate(select.options) if o.text.startswith("npe-two-moons "))
    select.select_by_index(index)
    wait(browser, lambda b: b.find_element(By.ID, "facts").get_attribute("data-model") == "npe-two-moons")
    assert not browser.find_element(By.ID, "image-section").is_displayed()
    for field, value in (("context", "0.3, 0.55"), ("n", "500"), ("seed", "2")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "sample").click()
    wait(browser, lambda b: b.find_element(By.ID, "grid").get_attribute("data-seed") == "2")
    api = httpx.post(
        f"{vector_server}/sample",
        json={"model": "npe-two-moons", "n": 500, "seed": 2, "context": [0.3, 0.55], "format": "png"},
    )
    assert image_bytes(browser, "grid") == api.content  # the posterior's pair plot
    p_value = float(api.headers["x-genserve-context-p-value"])
    shown_p = float(browser.find_element(By.ID, "sample-info").text.rsplit(" ", 1)[1])
    assert shown_p == pytest.approx(p_value, rel=5e-3)  # the observation's p-value, 3 digits
    shot(browser, "npe-two-moons-posterior")
    assert console_errors(browser) == []
