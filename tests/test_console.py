"""The web console in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium; no browser is downloaded).

Against real servers (``--http-listen 127.0.0.1:0``) and a real gRPC client:

- the overview shows the server, the hit ratio and its live plot, and the session a
  gRPC client just created (a screenshot goes to ``docs/console.png`` for the README);
- the session's entries show the digest the gRPC listing gives; invalidating one
  makes it disappear;
- a live event arrives without a reload; paused, events wait, and come on resume;
- a person name with markup, and a session id ``<img src=x onerror=alert(1)>`` (refused
  by the id pattern), are shown as text: no element, no script;
- with authentication on, the console asks for a token; a non-admin gets no admin
  panel (no session listing, no shared-region action), an admin does.

Screenshots of each step are kept in the test's temporary folder. Without chromium or
chromedriver the tests skip, except under ``CI=true`` (or
``SESSCACHE_REQUIRE_CHROMIUM=1``), where they fail.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.orm import Session

from sesscache.models import Person
from sesscache_client import Client
from tests.conftest import settings_for
from tests.support.required import required
from tests.support.servers import ROOT, ServerThread

MARKUP_NAME = '<b>bold</b><img src=x onerror="window.__xss=1">'
BAD_SESSION = "<img src=x onerror=alert(1)>"
ADMIN, VIEWER = "console-admin-token", "console-viewer-token"
SCREENSHOT = ROOT / "docs" / "console.png"


def _chromium() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    found = _chromium()
    if found is None:
        message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if required("SESSCACHE_REQUIRE_CHROMIUM"):
            pytest.fail(message)
        pytest.skip(message)
    binary, driver_path = found
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'c.db'}"
    with ServerThread(settings_for(url, http_listen="127.0.0.1:0")) as running:
        assert running.running is not None
        with Session(running.running.engine) as session:
            session.add(Person(name=MARKUP_NAME))
            session.commit()
        yield running


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console-auth') / 'a.db'}"
    tokens = f"{ADMIN}=ops:admin,{VIEWER}=alice"
    with ServerThread(settings_for(url, http_listen="127.0.0.1:0", auth_tokens=tokens)) as running:
        yield running


def url_of(server: ServerThread) -> str:
    assert server.running is not None
    assert server.running.http is not None
    return f"http://127.0.0.1:{server.running.http.port}/"


def wait(driver: WebDriver, until: Callable[[WebDriver], Any], timeout: float = 10) -> Any:
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(until)


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def text_of(driver: WebDriver, selector: str) -> str:
    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return " ".join(e.text for e in elements)


def no_injection(driver: WebDriver) -> None:
    """Nothing a client sent became an element or ran."""
    assert driver.execute_script("return document.querySelectorAll('main img, main b').length") == 0
    assert driver.execute_script("return window.__xss === undefined") is True


def console_problems(driver: WebDriver) -> list[str]:
    """The browser console's errors since the last call, but the HTTP errors the tests
    provoke on purpose (a refused session id, a wrong token)."""
    assert isinstance(driver, webdriver.Chrome)
    return [
        str(entry["message"])
        for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE"
        and "the server responded with a status of 4" not in entry["message"]
    ]


def row_with(driver: WebDriver, table: str, text: str) -> WebElement | None:
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr"):
        if text in row.text:
            return row
    return None


def traffic(session: Any, *, seconds: float) -> None:
    """Hits at a rate that rises and falls, and now and then a miss."""
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline:
        step += 1
        for index in range(1 + (step // 4) % 6):
            session.query_persons(name=f"person {10 + index}")
        if step % 9 == 0:
            session.query_persons(name=f"person {20 + step % 25}")
        time.sleep(0.05)


def test_console_sessions_entries_and_live_events(
    browser: WebDriver, console_server: ServerThread, tmp_path: Path
) -> None:
    base = url_of(console_server)
    with Client(console_server.target, timeout=10) as client:
        demo = client.session("console-demo")
        for name in ("person 10", "person 11", MARKUP_NAME, "person 10", "person 10"):
            demo.query_persons(name=name)
        entries = demo.list_cache_keys()
        digest = entries[0].digest
        markup = next(e for e in entries if MARKUP_NAME in e.key)

        # Overview: the server, the hit ratio, its plot, the session just used.
        open_page(browser, base)
        wait(browser, lambda d: "hit ratio" in text_of(d, "#stats").lower())
        wait(browser, lambda d: row_with(d, "sessions", "console-demo") is not None)
        traffic(demo, seconds=8)  # for the plot's lines
        wait(browser, lambda d: "hits/s" in text_of(d, ".legend"))
        assert "sqlite" in text_of(browser, ".cards")
        browser.set_window_size(1280, 1180)
        browser.save_screenshot(str(tmp_path / "overview.png"))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        browser.set_window_size(1280, 860)

        # Sessions, then that session's entries, with the digest gRPC lists.
        browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="sessions"]').click()
        link = wait(
            browser,
            lambda d: next(
                (
                    a
                    for a in d.find_elements(By.CSS_SELECTOR, "#sessions a")
                    if a.text == "console-demo"
                ),
                None,
            ),
        )
        browser.save_screenshot(str(tmp_path / "sessions.png"))
        link.click()
        wait(browser, lambda d: digest in text_of(d, "#entries td.digest"))

        # The markup of a person name and of SQL parameters is text.
        row = wait(
            browser, lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-digest="{markup.digest}"]')
        )
        row.find_element(By.TAG_NAME, "summary").click()
        assert MARKUP_NAME in row.text
        no_injection(browser)
        browser.save_screenshot(str(tmp_path / "entries.png"))

        # Invalidate one entry: it disappears, here and over gRPC.
        target = browser.find_element(By.CSS_SELECTOR, f'tr[data-digest="{digest}"]')
        target.find_element(By.TAG_NAME, "button").click()
        wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-digest="{digest}"]'))
        assert "removed 1 entry" in text_of(browser, "#notice")
        assert digest not in {e.digest for e in demo.list_cache_keys()}

        # Live events: one arrives without a reload; paused, it waits.
        browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="events"]').click()
        wait(browser, lambda d: "received 0" in text_of(d, "#event-status"))
        demo.query_persons(name="person 11")
        wait(browser, lambda d: row_with(d, "events", "console-demo") is not None)
        assert "hit" in text_of(browser, "#events tbody tr:first-child")
        shown = len(browser.find_elements(By.CSS_SELECTOR, "#events tbody tr"))
        browser.find_element(By.ID, "pause").click()
        demo.query_persons(name="person 11")
        wait(browser, lambda d: "1 waiting" in text_of(d, "#event-status"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == shown
        browser.find_element(By.ID, "pause").click()
        wait(
            browser,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == shown + 1,
        )
        browser.save_screenshot(str(tmp_path / "events.png"))

    # A session id with markup: refused by the id pattern, the error shown as text.
    browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="entries"]').click()
    field = wait(browser, lambda d: d.find_element(By.ID, "session-id"))
    field.clear()
    field.send_keys(BAD_SESSION)
    browser.find_element(By.CSS_SELECTOR, "#open-session button").click()
    wait(browser, lambda d: "session-id" in text_of(d, ".error"))
    assert "INVALID_ARGUMENT" in text_of(browser, ".error")
    assert browser.find_element(By.ID, "session-id").get_attribute("value") == BAD_SESSION
    no_injection(browser)
    browser.save_screenshot(str(tmp_path / "bad-session.png"))
    # Nothing the page does breaks its Content-Security-Policy, nor fails otherwise.
    assert console_problems(browser) == []


def test_non_admin_gets_no_admin_panels(
    browser: WebDriver, auth_server: ServerThread, tmp_path: Path
) -> None:
    base = url_of(auth_server)
    with Client(auth_server.target, timeout=10, token=VIEWER) as client:
        digest = client.session("viewer-session").query_persons(name="person 10")
        entries = client.session("viewer-session").list_cache_keys()
    assert digest.cache_status
    open_page(browser, base)
    # No token yet: the console asks for one.
    wait(browser, lambda d: d.find_element(By.ID, "login").is_displayed())
    token = browser.find_element(By.ID, "token")
    token.send_keys("not-a-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait(browser, lambda d: "unknown token" in text_of(d, "#login-error"))
    token.send_keys(VIEWER)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait(browser, lambda d: d.find_element(By.ID, "role").text == "no admin role")
    assert not browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="sessions"]').is_displayed()
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return sessionStorage.getItem('sesscache.token')") == VIEWER

    browser.get(base + "#/sessions")
    wait(browser, lambda d: "admin role" in text_of(d, "#denied"))
    browser.get(base + "#/entries?session=viewer-session")
    wait(browser, lambda d: entries[0].digest in text_of(d, "#entries td.digest"))
    assert not browser.find_elements(By.ID, "invalidate-shared")
    regions = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#region option")]
    assert regions == ["local_session"]
    browser.save_screenshot(str(tmp_path / "viewer.png"))

    # An admin gets the panels: the session listing (ids hashed) and the shared region.
    browser.execute_script("sessionStorage.setItem('sesscache.token', arguments[0])", ADMIN)
    browser.get(base + "#/sessions")
    browser.refresh()  # a new hash alone does not load the page again
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    wait(browser, lambda d: d.find_element(By.ID, "role").text == "admin")
    wait(browser, lambda d: "h:" in text_of(d, "#sessions tbody"))
    browser.get(base + "#/entries?session=x")
    wait(browser, lambda d: d.find_elements(By.ID, "invalidate-shared"))
    browser.save_screenshot(str(tmp_path / "admin.png"))
    assert console_problems(browser) == []
