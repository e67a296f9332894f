"""The web page in a real headless Chromium (Debian's chromium + chromedriver, installed by `make setup`)."""
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED
from tests.serve.test_server import Server

CAT = SHARED / "data" / "cifar10_test_1k" / "cat" / "0000.jpg"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip("chromium/chromedriver not installed (make setup installs them with apt)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    from selenium.webdriver.chrome.service import Service as ChromeService

    return webdriver.Chrome(service=ChromeService(executable_path=driver_bin), options=opts)


@pytest.fixture(scope="module")
def page_server(flickr_index, tiny_clip):
    from retrieval import open_index
    from retrieval import create_app

    srv = Server(create_app({"flk": open_index(flickr_index, tiny_clip)}))
    yield srv
    srv.stop()


def test_page_search_upload_more_like_this_and_classify(page_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = _driver()
    try:
        wait = WebDriverWait(d, 30)
        d.get(page_server.url + "/")
        wait.until(lambda d: "serving 1 index" in d.find_element(By.ID, "status").text)

        def loaded_images():
            return d.execute_script(
                "return [...document.querySelectorAll('#results .card img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length")

        box = d.find_element(By.ID, "q")
        box.send_keys("a dog running on the grass")
        k = d.find_element(By.ID, "k")
        k.clear()
        k.send_keys("8")
        d.find_element(By.ID, "search-btn").click()
        wait.until(lambda d: loaded_images() == 8)
        assert "8 results" in d.find_element(By.ID, "status").text
        captions = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#results .caption")]
        assert len(captions) == 8 and all(captions)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "web_page_text_search.png"))

        first = d.find_element(By.CSS_SELECTOR, "#results .card").get_attribute("data-id")
        d.find_element(By.CSS_SELECTOR, "#results .card .more").click()       # "more like this"
        wait.until(lambda d: f"item {first}" in d.find_element(By.ID, "status").text)
        assert d.find_element(By.CSS_SELECTOR, "#results .card").get_attribute("data-id") == first

        d.find_element(By.ID, "upload").send_keys(str(CAT))                    # search by image
        wait.until(lambda d: "0000.jpg" in d.find_element(By.ID, "status").text and loaded_images() == 8)

        d.find_element(By.ID, "classify-file").send_keys(str(CAT))
        d.find_element(By.ID, "classes").send_keys("cat\ndog\nship")
        d.find_element(By.ID, "classify-btn").click()
        wait.until(lambda d: d.find_element(By.ID, "classify-out").get_attribute("data-label"))
        assert d.find_element(By.ID, "classify-out").get_attribute("data-label") in ("cat", "dog", "ship")
        assert "captions top-3" in d.find_element(By.ID, "classify-out").text
        d.save_screenshot(str(ARTIFACTS / "web_page.png"))
        assert (ARTIFACTS / "web_page.png").stat().st_size > 10_000
    finally:
        d.quit()
