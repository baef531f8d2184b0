"""The demo page end to end in headless Chromium (Selenium + the system chromedriver): upload through the page's
<input type=file>, read the results from the DOM, screenshot, a bad upload shows an error, a later good one works.

Skipped (with the reason) when selenium, Chromium or chromedriver is missing; ``.ci/run`` installs Debian's
``chromium chromium-driver``."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
try:
    import selenium
except ImportError:
    selenium = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="Chromium / chromedriver not installed (apt-get install chromium chromium-driver); "
                              "the browser end-to-end test needs them"),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download drivers
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _upload(driver, path: Path, count: int, timeout: float = 40) -> str:
    """Choose ``path`` in the page's file input (which submits it); wait for query number ``count``; the page state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-queries") == str(count))
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def test_upload_results_screenshot_and_errors_in_chromium(browser, demo_url, demo_world, bad_files, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(demo_url + "/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "labels").get_attribute("value"))
    assert driver.find_element(By.ID, "labels").get_attribute("value") == ", ".join(demo_world.collection.categories)
    assert "index of 20 shapes" in driver.find_element(By.ID, "info").text

    # 1. a point cloud: zero-shot labels with scores + the top-k shapes with their thumbnails
    index = demo_world.index
    query = index.root / index.paths[5]
    assert _upload(driver, query, 1) == "done"
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#label-table .label-row .label-name")]
    scores = [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#label-table .label-row .label-score")]
    expected = demo_world.model.classify(str(query), labels=list(demo_world.collection.categories))[0]
    assert names == [n for n, _ in expected]
    assert scores == pytest.approx([s for _, s in expected], abs=1e-4)
    hits = driver.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert len(hits) == 4
    assert hits[0].find_element(By.CLASS_NAME, "hit-path").text == f"1. {index.paths[5]}"  # itself first
    assert float(hits[0].find_element(By.CLASS_NAME, "hit-score").text) > 0.99
    loaded = driver.execute_script(
        "return Array.from(document.querySelectorAll('#hits img.thumb')).map(i => i.complete && i.naturalWidth)")
    assert loaded == [96] * 4  # every thumbnail came from the index
    assert driver.execute_script("return document.getElementById('query-preview').naturalWidth") == 160
    assert not driver.find_element(By.ID, "error").is_displayed()

    shot = tmp_path / "demo_results.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50  # text, bars and thumbnails, not a blank page
    if os.environ.get("CAPTIONLESS3D_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["CAPTIONLESS3D_DEMO_SCREENSHOT"])

    # 2. bad uploads: a clear message on the page, results hidden
    for n, (which, message) in enumerate([("nan", "NaN/Inf coordinates"), ("image", "not a readable image"),
                                          ("mesh", "unreadable mesh or point cloud")], start=2):
        assert _upload(driver, bad_files[which], n) == "error"
        error = driver.find_element(By.ID, "error")
        assert error.is_displayed() and message in error.text and bad_files[which].name in error.text
        assert not driver.find_element(By.ID, "results").is_displayed()

    # 3. the server survived: a photo now searches the index
    photo = index.directory.parent / "examples" / "photo_table.png"
    assert _upload(driver, photo, 5) == "done"
    assert not driver.find_element(By.ID, "error").is_displayed()
    assert not driver.find_element(By.ID, "label-box").is_displayed()  # labels are for point clouds
    paths = [e.text.split(". ", 1)[1] for e in driver.find_elements(By.CSS_SELECTOR, "#hits .hit .hit-path")]
    assert paths == [h.path for h in demo_world.model.search(image=str(photo), k=4, index=index)]
