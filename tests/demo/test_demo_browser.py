"""The Gradio demo page end to end in headless Chromium (Selenium + the system chromedriver): upload through the page's
file input, read the results from the DOM, see both 3D viewers draw, screenshot, bad uploads show their error, a
photo then works, an example and a gallery click work, and nothing was loaded from outside the server.

Skipped (with the reason) when gradio, selenium, Chromium or chromedriver is missing; ``.ci/run`` installs Debian's
``chromium chromium-driver``."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
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
    # SwiftShader: WebGL without a GPU, for the 3D viewers
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1300",
                "--disable-extensions", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def _upload(driver, path: Path, count: int, timeout: float = 90) -> str:
    """Choose ``path`` in the page's file input (which runs the query); wait until query ``count`` is answered;
    ``"done"`` or ``"error"``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))
    return _wait_for_query(driver, count, timeout)


def _wait_for_query(driver, count: int, timeout: float = 90) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    marks = (f"query {count}:", f"Query {count}: error")
    WebDriverWait(driver, timeout).until(lambda d: any(m in _text(d, "summary") + _text(d, "error") for m in marks))
    return "error" if marks[1] in _text(driver, "error") else "done"


def _rows(driver, element_id: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} table tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _canvas_drawn(driver, element_id: str, timeout: float = 60) -> bool:
    """Whether the 3D viewer's WebGL canvas shows anything but the white background (Babylon draws asynchronously)."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(d):
        canvases = d.find_elements(By.CSS_SELECTOR, f"#{element_id} canvas")
        if not canvases:
            return False
        image = Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("RGB")
        return any(r + g + b < 600 for r, g, b in image.getdata())

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(drawn)
        return True
    except Exception:  # noqa: BLE001 - selenium's TimeoutException: not drawn
        return False


def test_upload_results_3d_screenshot_and_errors_in_chromium(browser, demo_url, demo_world, bad_files, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    model, index = demo_world.model, demo_world.index
    categories = list(demo_world.collection.categories)
    driver.get(demo_url + "/")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#labels textarea, #labels input"))
    field = driver.find_element(By.CSS_SELECTOR, "#labels textarea, #labels input")
    assert field.get_attribute("value") == ", ".join(categories)
    assert "index of 20 shapes" in _text(driver, "info")

    # 1. a point cloud: itself in 3D, zero-shot labels with scores, the top-k shapes with thumbnails, the first in 3D
    query = index.root / index.paths[5]
    assert _upload(driver, query, 1) == "done"
    assert f"query 1: {query.name} (point cloud), 4 nearest of 20" in _text(driver, "summary").replace("\\", "")
    expected = model.classify(str(query), labels=categories)[0]
    labels = _rows(driver, "label-table")
    assert [row[1] for row in labels] == [name for name, _ in expected]
    assert [float(row[2]) for row in labels] == pytest.approx([score for _, score in expected], abs=1e-4)
    hits = _rows(driver, "hit-table")
    assert [row[0] for row in hits] == ["1", "2", "3", "4"]
    assert hits[0][1] == index.paths[5] and float(hits[0][2]) > 0.99  # itself first
    widths_js = "return Array.from(document.querySelectorAll('#hits img')).map(i => i.complete ? i.naturalWidth : 0)"
    WebDriverWait(driver, 30).until(lambda d: len(d.execute_script(widths_js)) == 4
                                    and all(d.execute_script(widths_js)))
    assert driver.execute_script(widths_js) == [96] * 4  # every thumbnail came from the index
    assert _canvas_drawn(driver, "query-3d"), "the uploaded cloud was not drawn in the 3D viewer"
    assert _canvas_drawn(driver, "hit-3d"), "the first result was not drawn in the 3D viewer"
    assert index.paths[5] in _text(driver, "hit-3d")
    assert not _text(driver, "error").strip()

    shot = tmp_path / "demo_results.png"
    assert driver.save_screenshot(str(shot))
    image = Image.open(shot).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 800
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50  # text, tables, thumbnails and 3D, not a blank page
    if os.environ.get("CAPTIONLESS3D_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["CAPTIONLESS3D_DEMO_SCREENSHOT"])

    # 2. bad uploads: the message on the page, naming the file; the results are cleared
    for n, (which, message) in enumerate([("nan", "NaN/Inf coordinates"), ("image", "not a readable image"),
                                          ("mesh", "unreadable mesh or point cloud")], start=2):
        assert _upload(driver, bad_files[which], n) == "error"
        error = _text(driver, "error").replace("\\", "")
        assert message in error and bad_files[which].name in error, error
        assert not _rows(driver, "hit-table") and not driver.find_elements(By.CSS_SELECTOR, "#hits img")

    # 3. the server survived: a photo now searches the index (no zero-shot labels for photos)
    photo = index.directory.parent / "examples" / "photo_table.png"
    assert _upload(driver, photo, 5) == "done"
    assert not _text(driver, "error").strip() and not _rows(driver, "label-table")
    paths = [row[1] for row in _rows(driver, "hit-table")]
    assert paths == [h.path for h in model.search(image=str(photo), k=4, index=index)]
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("const i = document.querySelector('#query-photo img'); return i && i.naturalWidth"))

    # 4. a clickable example from the indexed test split
    button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "shape chair")
    button.click()
    assert _wait_for_query(driver, 6) == "done"
    assert "shape_chair.ply (point cloud)" in _text(driver, "summary").replace("\\", "")

    # 5. selecting the second thumbnail shows that shape in the 3D viewer
    second = _rows(driver, "hit-table")[1][1]
    driver.find_elements(By.CSS_SELECTOR, "#hits button.thumbnail-item, #hits .thumbnail-item")[1].click()
    WebDriverWait(driver, 30).until(lambda d: f"Shape 2 in 3D: {second}" in _text(d, "hit-3d"))

    # 6. nothing came from outside this server (Gradio ships its fonts and scripts; there is no network)
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in loaded if not u.startswith((demo_url, "data:", "blob:"))]
    assert loaded and not outside, outside
