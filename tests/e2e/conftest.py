"""Real-browser fixtures: one headless Chromium per test session, driven by Selenium.

Nothing is downloaded: Debian's Chromium and ChromeDriver are used from /usr/bin, and Selenium
Manager is never consulted (both paths are given explicitly). When either binary is missing the
browser tests skip with the reason.

The pages come from pytest-django's `live_server` (a real HTTP server in a thread, on the test
database; it needs `transactional_db`, and tests/conftest.py re-seeds the plans after each flush).
"""

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db import connections
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("E2E_CHROMEDRIVER", "/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT_SECONDS = 10

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--lang=en-US",
)


def _missing_browser() -> str | None:
    for label, path in (("Chromium", CHROMIUM), ("ChromeDriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"browser tests need {label} at {path} (Debian: chromium, chromium-driver)"
    return None


class _Chromium:
    """One headless Chromium with its own profile (its own cookies: a browser context)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="aibaas-e2e-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        width, height = DESKTOP
        args = (
            *CHROMIUM_ARGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
        )
        for arg in args:
            options.add_argument(arg)
        # The browser's console log (driver.get_log("browser")): CSP violations are reported there.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = None
        try:
            self.driver = webdriver.Chrome(
                service=Service(executable_path=CHROMEDRIVER), options=options
            )
            self.driver.set_page_load_timeout(30)
        except Exception:
            self.quit()
            raise

    def quit(self) -> None:
        if self.driver is not None:
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Selenium WebDriver) for the whole session; quit at the end."""
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    chromium = _Chromium()
    try:
        yield chromium.driver
    finally:
        chromium.quit()


@pytest.fixture
def second_web(web):
    """A second, separate browser (other cookies, other session) on the same live server: the
    other person of a two-person test."""
    chromium = _Chromium()
    try:
        yield Web(chromium.driver, web.base_url)
    finally:
        chromium.quit()


SCREENSHOTS = Path(__file__).resolve().parents[2] / "e2e-screenshots"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests leave screenshots for review: $E2E_SCREENSHOT_DIR, else the
    git-ignored e2e-screenshots/ at the top of the checkout."""
    path = Path(os.environ.get("E2E_SCREENSHOT_DIR") or SCREENSHOTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _live_server_threads_leave_the_shared_sqlite_connection_alone():
    """pytest-django's live server (session-wide) lends its request threads the test thread's
    in-memory SQLite connection. A thread serving a keep-alive connection (Chromium's, an SDK's)
    ends when the client drops the socket, which can be minutes and many tests later, and then
    closes every connection it holds: for the lent one that is a no-op at best and a
    "DatabaseWrapper objects created in a thread can only be used in that same thread" error
    at worst, reported against whatever test runs then (two at once fail it). Django marks this
    method as the place to change in tests: close the thread's own connections only."""
    original = ThreadedWSGIServer._close_connections

    def close_own_connections(server) -> None:
        lent = set((server.connections_override or {}).values())
        for connection in connections.all(initialized_only=True):
            if connection not in lent:
                connection.close()

    ThreadedWSGIServer._close_connections = close_own_connections
    yield
    ThreadedWSGIServer._close_connections = original


@pytest.fixture(scope="session")
def _live_server_db_connections_per_request():
    """Close the live server's database connections after every request.

    The browser keeps HTTP connections alive; the live server serves each one in its own thread,
    and that thread closes its database connection only when the socket closes. With a
    persistent CONN_MAX_AGE (the PostgreSQL settings) those connections would outlive the tests
    and block dropping the test database at the end of the session.
    """
    saved = {alias: connections.settings[alias].get("CONN_MAX_AGE") for alias in connections}
    for alias in saved:
        connections.settings[alias]["CONN_MAX_AGE"] = 0
    yield
    for alias, value in saved.items():
        connections.settings[alias]["CONN_MAX_AGE"] = value


@pytest.fixture
def web(browser, live_server, _live_server_db_connections_per_request):
    """The session browser, reset for one test: no cookies, desktop viewport, live server up."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    set_viewport(browser, *DESKTOP)
    browser.get("about:blank")
    return Web(browser, live_server.url)


def set_viewport(driver, width: int, height: int, *, mobile: bool = False) -> None:
    """Make the page viewport exactly width x height CSS pixels (what media queries see).

    `mobile=True` emulates a phone: the page's <meta name="viewport"> is honoured, so a page
    wider than the screen makes the layout viewport grow (innerWidth > width) instead of hiding.
    """
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _gone(element):
    """Like expected_conditions.staleness_of, but also accepts Chromium's other way of saying
    the node left the document ("Node with given id does not belong to the document"), which
    it sometimes raises instead of a stale-element error while the next page loads."""

    def check(driver) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    return check


class Web:
    """Small helpers over the driver, so tests read as user steps."""

    def __init__(self, driver, base_url: str):
        self.driver = driver
        self.base_url = base_url.rstrip("/")

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    def wait(self, condition, message: str = ""):
        return WebDriverWait(self.driver, WAIT_SECONDS).until(condition, message)

    def wait_for_path(self, path: str) -> None:
        self.wait(
            lambda d: urlsplit(d.current_url).path == path,
            f"expected to land on {path}",
        )
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def button(self, text: str):
        return self.driver.find_element(By.XPATH, f"//button[normalize-space()='{text}']")

    def fill(self, fields: dict[str, str]) -> None:
        """Type into inputs by their id, replacing what is there."""
        for element_id, value in fields.items():
            element = self.find(f"#{element_id}")
            element.clear()
            element.send_keys(value)

    def submit(self, text: str) -> None:
        """Click the submit button labelled `text` and wait for the old page to go away."""
        html = self.find("html")
        self.button(text).click()
        self.wait(_gone(html), f"clicking {text!r} did not load a new page")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def table_rows(self, testid: str) -> list[list[str]]:
        rows = self.find_all(f'[data-testid="{testid}"] tbody tr')
        return [[td.text.strip() for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def log_in(self, email: str, password: str) -> None:
        self.open("/accounts/login/")
        self.fill({"id_username": email, "id_password": password})
        self.submit("Log in")
        self.wait_for_path("/dashboard/")
