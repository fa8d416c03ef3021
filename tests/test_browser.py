"""The demo page in a real browser (headless Chromium through selenium) against the live service and a
real Redis: keystroke search, a typo, the more-like-this row, the click reaching Redis, the pre-query row
after clicks, a fetch from another origin (CORS), and /docs rendering from the service's own files.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`), installed with apt-get when
missing, as the Prometheus test does; the test is skipped, saying why, only where they cannot be
installed. It saves a screenshot of the page (UNIRANK_SCREENSHOT: also copy it there, e.g. docs/demo.png).
"""

from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import threading

import numpy as np
import pytest

from tests.helpers import LiveServer, debian_binaries
from unirank.core.history import history_key
from unirank.core.tables import FeatureTables
from unirank.loop.redis_client import redis_client

WAIT_S = 20


def _chromium() -> dict[str, str | None]:
    return {
        "browser": shutil.which("chromium") or shutil.which("chromium-browser"),
        "driver": shutil.which("chromedriver"),
    }


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    found = debian_binaries(_chromium, ["chromium", "chromium-driver"])
    if not all(found.values()):
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (apt-get) to run the browser test")
    return found["browser"], found["driver"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory):
    """A page on another origin (another port): the frontend app of a team that calls the API."""
    root = tmp_path_factory.mktemp("app")
    (root / "index.html").write_text("<!doctype html><title>app</title><p>another origin</p>")
    handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
    server = socketserver.TCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def demo(bundle_dir, redis_url, other_origin):
    env = {"UNIRANK_DEMO_PAGE": "1", "UNIRANK_CORS_ORIGINS": other_origin}
    live = LiveServer(bundle_dir, redis_url, env)
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _wait(browser, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda d: condition(d))


def _cards(browser, row: str) -> list:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, f"#{row} .card")


def _ids(browser, row: str) -> list[str]:
    return [c.get_attribute("data-entity-id") for c in _cards(browser, row)]


def _titles(browser, row: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.find_element(By.CSS_SELECTOR, ".title").text for c in _cards(browser, row)]


def _a_long_word(tables: FeatureTables) -> str:
    us = tables.country_index["US"]
    words = sorted(
        {w for i, t in enumerate(tables.norm_titles) if i and tables.avail[i, us] for w in t.split() if len(w) >= 6}
    )
    return words[0]


def _type(element, text: str) -> None:
    for ch in text:  # key by key, as a person types: every keystroke is a request
        element.send_keys(ch)


def test_the_demo_page_in_a_browser(demo, browser, bundle_dir, redis_url, other_origin, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    tables = FeatureTables.load(bundle_dir / "tables")
    browser.get(f"{demo.url}/demo")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    _wait(browser, lambda d: len(_cards(d, "prequery")) > 0)
    users = Select(browser.find_element(By.ID, "user"))
    users.select_by_index(1)  # a known user of the bundle
    user = users.first_selected_option.get_attribute("value")
    _wait(browser, lambda d: len(_cards(d, "prequery")) > 0)
    prequery_before = _ids(browser, "prequery")

    word = _a_long_word(tables)
    box = browser.find_element(By.ID, "q")
    _type(box, word[:3])
    _wait(browser, lambda d: f'"{word[:3]}"' in d.find_element(By.ID, "results-title").text and _cards(d, "results"))
    titles = _titles(browser, "results")
    assert titles and all(any(w.startswith(word[:3]) for w in t.lower().split()) for t in titles), titles
    status = browser.find_element(By.ID, "status").text
    assert "ms" in status and "server" in status, status  # per-keystroke latency, Server-Timing's total

    box.clear()
    typo = word[:3] + ("x" if word[3] != "x" else "z") + word[4:]  # one letter wrong
    _type(box, typo)
    _wait(browser, lambda d: f'"{typo}"' in d.find_element(By.ID, "results-title").text)
    _wait(browser, lambda d: any(word in t.lower() for t in _titles(d, "results")))

    clicked_ids = []
    first = _cards(browser, "results")[0]
    clicked_ids.append(first.get_attribute("data-entity-id"))
    first.click()
    source = clicked_ids[0]
    _wait(browser, lambda d: d.find_element(By.ID, "similar-section").get_attribute("data-source") == source)
    _wait(browser, lambda d: len(_cards(d, "similar")) > 0)
    assert clicked_ids[0] not in _ids(browser, "similar")
    for _ in range(2):  # two more clicks, from the more-like-this row
        card = _cards(browser, "similar")[0]
        clicked_ids.append(card.get_attribute("data-entity-id"))
        card.click()
        _wait(
            browser,
            lambda d, e=clicked_ids[-1]: d.find_element(By.ID, "similar-section").get_attribute("data-source") == e,
        )
    client = redis_client(redis_url)
    history = [h.decode().split("|")[0] for h in client.lrange(history_key(user), 0, -1)]
    assert set(clicked_ids) <= set(history), (clicked_ids, history)
    _wait(browser, lambda d: _ids(d, "prequery") and _ids(d, "prequery") != prequery_before)

    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("UNIRANK_SCREENSHOT"):
        shutil.copy(shot, target)

    browser.get(other_origin)  # the API from another origin's page: CORS lets it read the answer
    answer = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(arguments[0] + "/rank", {method: "POST", headers: {"content-type": "application/json"},
              body: JSON.stringify({task: "prequery", country: "US", k: 3, display: true})})
          .then(async r => done({status: r.status, timing: r.headers.get("server-timing"), body: await r.json()}))
          .catch(e => done({error: String(e)}));""",
        demo.url,
    )
    assert answer.get("status") == 200, answer
    assert len(answer["body"]["items"]) == 3 and answer["body"]["items"][0]["title"] and answer["timing"]


def test_docs_render_from_the_service_alone(demo, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{demo.url}/docs")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    assert "unirank" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # the bearer scheme: "Authorize"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(demo.url) for url in loaded), loaded


def _genres(browser, row: str) -> list[set[str]]:
    from selenium.webdriver.common.by import By

    metas = [c.find_element(By.CSS_SELECTOR, ".meta").text for c in _cards(browser, row)]
    return [{g.strip() for g in m.split("·")[-1].split(",") if g.strip()} for m in metas]


def test_one_search_click_reranks_the_home_row_toward_it(demo, browser, bundle_dir):
    """UniSAR's search -> recommendation transition on the page: a user with no live history clicks one
    search result of a genre the home row barely shows (of those, the one least like the row); the row that
    follows has more in common with the clicked title (its genres, counted over the row's titles). A
    clicked title has other genres too, and the row may follow those rather than the rare one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    tables = FeatureTables.load(bundle_dir / "tables")
    browser.get(f"{demo.url}/demo")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    users = Select(browser.find_element(By.ID, "user"))
    users.select_by_index(len(users.options) - 1)  # not the user the other browser test clicks as
    _wait(browser, lambda d: len(_cards(d, "prequery")) > 0)
    before_ids, before = _ids(browser, "prequery"), _genres(browser, "prequery")

    box = browser.find_element(By.ID, "q")
    # a word whose results include a title of a genre the home row shows least
    shown = [g for gs in before for g in gs]
    rare = min((g for g in tables.genres[1:] if g), key=lambda g: (shown.count(g), g))
    us = tables.country_index["US"]
    words = dict.fromkeys(
        w
        for i, t in enumerate(tables.norm_titles)
        if i and tables.avail[i, us] and rare in {tables.genres[g] for g in np.flatnonzero(tables.genre_hot[i])}
        for w in t.split()
        if len(w) >= 4
    )
    pick = None
    for word in list(words)[:8]:  # the first word whose results show a title of that genre
        box.clear()
        _type(box, word)
        _wait(
            browser, lambda d, w=word: f'"{w}"' in d.find_element(By.ID, "results-title").text and _cards(d, "results")
        )
        cards = _cards(browser, "results")
        of_rare = [(c, g) for c, g in zip(cards, _genres(browser, "results"), strict=True) if rare in g]
        if of_rare:
            pick, picked = min(of_rare, key=lambda cg: sum(shown.count(g) for g in cg[1]))
            break
    assert pick is not None, f"a search result of genre {rare}"
    clicked = pick.get_attribute("data-entity-id")
    pick.click()
    _wait(browser, lambda d: d.find_element(By.ID, "similar-section").get_attribute("data-source") == clicked)
    _wait(browser, lambda d: _ids(d, "prequery") and _ids(d, "prequery") != before_ids)
    after = _genres(browser, "prequery")
    shared = lambda row: sum(len(g & picked) for g in row)  # noqa: E731
    assert shared(after) > shared(before), (picked, before, after)
