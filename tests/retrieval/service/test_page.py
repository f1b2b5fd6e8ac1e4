"""The page in a real browser: Debian's Chromium, headless, driven by Selenium against the real server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from retrieval.service import ServiceConfig, create_app
from tests.conftest import make_image
from tests.retrieval.service.conftest import live_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")
WAIT = 30  # seconds for anything the page does


def need_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    reason = (f"the browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
              f"apt-get install chromium chromium-driver")
    if os.environ.get("S2S_REQUIRE_BROWSER") == "1":
        pytest.fail(f"S2S_REQUIRE_BROWSER=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    need_browser()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, head_engine, head_index):
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(create_app(head_engine, ServiceConfig(index=head_index))) as url:
        browser.get(url + "/")
        WebDriverWait(browser, WAIT).until(
            lambda d: "ok" in d.find_element("id", "index-status").get_attribute("class"))
        yield browser


def drag_box(driver, canvas, fraction: float = 0.5) -> None:
    """Press the mouse in the canvas's top-left quarter and release it ``fraction`` of the canvas further on."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = canvas.size["width"], canvas.size["height"]
    (ActionChains(driver)
     .move_to_element_with_offset(canvas, -width // 4, -height // 4)  # offsets from the centre
     .click_and_hold()
     .move_by_offset(int(width * fraction) // 2, int(height * fraction) // 2)
     .move_by_offset(int(width * fraction) - int(width * fraction) // 2,
                     int(height * fraction) - int(height * fraction) // 2)
     .release()
     .perform())


def test_search_page_finds_ten_products_for_a_boxed_photo(page, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    street = tmp_path / "street.jpg"
    make_image(320, 240, seed=7).save(street, quality=95)
    categories = [o.get_attribute("value") for o in page.find_elements("css selector", "#category option")]
    assert categories == ["", "bags", "dresses"]
    page.find_element("id", "search-file").send_keys(str(street))
    canvas = page.find_element("css selector", "#search-picker canvas")
    WebDriverWait(page, WAIT).until(lambda d: canvas.is_displayed() and canvas.size["width"] > 100)
    box_text = page.find_element("css selector", "#search-picker .box-text")
    assert box_text.text.startswith("Whole photo (320 × 240)")

    drag_box(page, canvas)
    box = re.fullmatch(r"Box (\d+), (\d+) · (\d+) × (\d+) px", box_text.text)
    assert box, box_text.text
    left, top, width, height = (int(v) for v in box.groups())
    assert abs(left - 80) <= 3 and abs(top - 60) <= 3 and abs(width - 160) <= 3 and abs(height - 120) <= 3

    Select(page.find_element("id", "category")).select_by_value("dresses")
    page.find_element("id", "search-go").click()
    WebDriverWait(page, WAIT).until(
        lambda d: len(d.find_elements("css selector", "#results li.match:not(.skeleton)")) == 10)

    cards = page.find_elements("css selector", "#results li.match")
    products = [card.find_element("class name", "product").text for card in cards]
    scores = [card.find_element("class name", "score").text for card in cards]
    ranks = [card.find_element("class name", "rank").text for card in cards]
    assert all(re.fullmatch(r"Product \d+", p) for p in products) and len(set(products)) == 10
    assert all(re.fullmatch(r"\d{1,3}%", s) for s in scores)
    assert ranks == [f"#{n}" for n in range(1, 11)]
    assert all("dresses" in card.find_element("class name", "details").text for card in cards)
    WebDriverWait(page, WAIT).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    meta = page.find_element("id", "search-meta").text
    assert re.match(rf"10 products · dresses · box {left}, {top}, {width}, {height} · \d+ ms", meta), meta
    assert page.find_element("id", "search-message").is_displayed() is False

    shot = tmp_path / "search.png"
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_compare_tab_calls_identical_photos_the_same_item(page, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    photo, other = tmp_path / "a.png", tmp_path / "b.png"
    make_image(120, 160, seed=3).save(photo)
    make_image(120, 160, seed=4).save(other)
    page.find_element("id", "tab-compare").click()
    assert page.find_element("id", "panel-compare").is_displayed()
    assert not page.find_element("id", "panel-search").is_displayed()
    page.find_element("id", "compare-file-a").send_keys(str(photo))
    page.find_element("id", "compare-file-b").send_keys(str(photo))
    go = page.find_element("id", "compare-go")
    WebDriverWait(page, WAIT).until(lambda d: go.is_enabled())
    go.click()
    WebDriverWait(page, WAIT).until(lambda d: d.find_elements("css selector", "#verdict .call"))
    assert page.find_element("css selector", "#verdict .call").text == "Same item"
    facts = page.find_element("css selector", "#verdict .facts").text
    assert re.search(r"Score\s+9\d%|Score\s+100%", facts) and re.search(r"Distance\s+0\.0\d\d\d", facts), facts

    page.find_element("id", "compare-file-b").send_keys(str(other))
    drag_box(page, page.find_element("css selector", "#compare-b canvas"), 0.4)
    assert page.find_element("css selector", "#compare-b .box-text").text.startswith("Box ")
    go.click()
    WebDriverWait(page, WAIT).until(lambda d: [f.text for f in d.find_elements("css selector", "#verdict .facts")]
                                    not in ([], [facts]))
    assert page.find_element("css selector", "#verdict .call").text in ("Same item", "Different items")


def test_page_says_when_a_file_is_not_an_image(page, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    page.find_element("id", "search-file").send_keys(str(fake))
    title = page.find_element("css selector", "#search-picker .drop-title")
    WebDriverWait(page, WAIT).until(lambda d: "cannot read" in title.text)
    assert title.text == "notes.jpg: the browser cannot read this file as an image"
    assert not page.find_element("id", "search-go").is_enabled()


def test_a_box_can_be_drawn_moved_resized_and_cleared_with_the_keyboard(page, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    street = tmp_path / "street.png"
    make_image(200, 100, seed=5).save(street)
    page.find_element("id", "search-file").send_keys(str(street))
    canvas = page.find_element("css selector", "#search-picker canvas")
    WebDriverWait(page, WAIT).until(lambda d: canvas.is_displayed())
    box_text = page.find_element("css selector", "#search-picker .box-text")
    canvas.send_keys(Keys.ARROW_RIGHT)  # the first key draws a box on the middle half
    assert box_text.text == "Box 50, 25 · 100 × 50 px"
    canvas.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_DOWN)  # a step is 1/20 of the shorter side: 5 px
    assert box_text.text == "Box 55, 30 · 100 × 50 px"
    canvas.send_keys(Keys.SHIFT, Keys.ARROW_LEFT, Keys.ARROW_UP, Keys.SHIFT)
    assert box_text.text == "Box 55, 30 · 95 × 45 px"
    canvas.send_keys(Keys.ESCAPE)
    assert box_text.text.startswith("Whole photo (200 × 100)")


def test_the_hidden_file_input_shows_focus_on_its_button(page):
    """Tabbing onto the (invisible) file input must show where the keyboard is: on its "Choose a file" button."""
    outline = ("const l = document.getElementById('search-file').closest('label');"
               "return getComputedStyle(l).outlineStyle;")
    assert page.execute_script(outline) == "none"
    page.execute_script("document.getElementById('search-file').focus()")
    assert page.execute_script(outline) == "solid"


def test_without_chromium_the_browser_test_skips_unless_required(monkeypatch):
    import tests.retrieval.service.test_page as module

    monkeypatch.setattr(module, "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("S2S_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        need_browser()
    monkeypatch.setenv("S2S_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="S2S_REQUIRE_BROWSER=1, but .*/nonexistent/chromium missing"):
        need_browser()
