"""The browse page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
Selenium): a search, paging clicks, and the overlays seen in a screenshot's real pixels."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.needs_server
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1200,1800",
                  "--force-device-scale-factor=1")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y "
                    "chromium chromium-driver; .ci/run does)")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager: no telemetry, no network
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()
    monkeypatch.undo()


def click(browser, element) -> None:
    """Click a link or button and wait until the next page replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(lambda _: _replaced(old))


def _replaced(old) -> bool:
    """True once ``old`` left the document. Asked mid-navigation, chromedriver sometimes
    answers "Node with given id does not belong to the document" (an unknown error, not a
    stale reference): the node is gone all the same."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        old.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def names(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#grid a.object")]


def test_search_by_field_operator_value(pair, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sb, url, _ = pair
    wanted = requests.get(f"{sb.url}/image", params={"limit": 3}, timeout=30).json()[2]["name"]
    count = len(requests.get(f"{url}/api/v1/image", params={"limit": 0}, timeout=30).json())
    browser.get(f"{url}/")
    assert browser.find_element(By.ID, "count").text.startswith(f"{count} images")
    Select(browser.find_element(By.ID, "field")).select_by_visible_text("name")
    Select(browser.find_element(By.ID, "op")).select_by_visible_text("==")
    browser.find_element(By.ID, "value").send_keys(wanted)
    click(browser, browser.find_element(By.ID, "go"))
    assert names(browser) == [wanted]
    assert browser.find_element(By.ID, "count").text.startswith("1 images")


def test_paging_clicks_walk_every_image_once(pair, browser):
    from selenium.webdriver.common.by import By

    sb, url, _ = pair
    every = [i["name"] for i in requests.get(f"{url}/api/v1/image", params={
        "limit": 0, "sort": "_id"}, timeout=30).json()]
    pages = -(-len(every) // 4)
    assert pages >= 3
    browser.get(f"{url}/?per=4")
    seen = names(browser)
    assert browser.find_element(By.ID, "count").text.endswith(f"page 1 of {pages}")
    while browser.find_elements(By.ID, "next"):
        click(browser, browser.find_element(By.ID, "next"))
        seen += names(browser)
    assert browser.find_element(By.ID, "count").text.endswith(f"page {pages} of {pages}")
    assert seen == every
    click(browser, browser.find_element(By.ID, "prev"))
    assert browser.find_element(By.ID, "count").text.endswith(f"page {pages - 1} of {pages}")


def shot(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"),
                      np.int32)


def share_near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    return float((np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).mean())


def test_object_page_shows_metadata_files_and_overlays(pair, browser):
    from selenium.webdriver.common.by import By

    _, url, _ = pair
    images = requests.get(f"{url}/api/v1/image", params={"limit": 0}, timeout=30).json()
    image = next(i for i in images if any(not s["failed"] for s in requests.get(
        f"{url}/api/v1/segmentation", params={"imageId": i["_id"]}, timeout=30).json()))
    browser.get(f"{url}/")
    click(browser, browser.find_element(By.LINK_TEXT, image["name"]))
    assert browser.current_url.endswith(f"/browse/image/{image['_id']}")
    metadata = browser.find_element(By.ID, "metadata").text
    assert "meta.acquisition.pixelsX" in metadata and image["name"] in metadata
    roles = browser.find_element(By.ID, "files").text
    assert all(role in roles for role in ("image", "superpixels", "thumbnail"))
    for name in ("mask", "superpixels"):
        element = browser.find_element(By.ID, f"overlay-{name}")
        assert browser.execute_script("return arguments[0].complete && "
                                      "arguments[0].naturalWidth", element) == 512
    mask, superpixels = (shot(browser.find_element(By.ID, f"overlay-{n}"))
                         for n in ("mask", "superpixels"))
    browser.get(f"{url}/?field=_id&op=%3D%3D&value={image['_id']}")
    plain = shot(browser.find_element(By.CSS_SELECTOR, "#grid img"))
    assert share_near(plain, (0, 255, 0)) == 0 and share_near(plain, (255, 0, 255)) == 0
    assert share_near(mask, (0, 255, 0)) > 0.002  # the lesion's outline, in green
    assert share_near(superpixels, (255, 0, 255)) > 0.02  # ~1,000 cells' edges, magenta
