"""The overview's counters in a real Chromium: calls made with the openai SDK while the page is
open show up in place (requests, tokens, spend, quota bars) without a reload; a hidden tab
stops asking and catches up at once when shown again; no CSP violation on the way."""

import time
from decimal import Decimal

import httpx
import openai
import pytest
from selenium.webdriver.support.ui import WebDriverWait

from accounts.actors import Actor
from billing.models import Plan
from keys import touch
from keys.services import api_key_create
from tests.e2e.conftest import DESKTOP, PHONE, set_viewport
from tests.e2e.test_browser_team import NO_HORIZONTAL_OVERFLOW
from tests.factories import PASSWORD, AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.gateway.asgi_client import BASE, SyncAsgiTransport

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

POLL_SECONDS = 5  # data-live-interval of templates/dashboard/overview.html
COUNTERS = """
const text = (name) => document.querySelector('[data-live="' + name + '"]').textContent.trim();
return {
  requests: text("requests.used"), tokens: text("tokens.used"), cost: text("cost"),
  percent: text("requests.percent"),
  meter: document.querySelector('[data-live-meter="requests.percent"]').value,
  polls: performance.getEntriesByType("resource")
    .filter(e => e.name.includes("/dashboard/overview.json")).length,
  marker: window.__notReloaded === true,
};
"""


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def owner(db):
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    ModelPriceFactory(model=chat, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    plan = Plan.objects.create(
        slug="live", name="Live", monthly_request_quota=20, monthly_token_quota=1_000_000
    )
    membership = MembershipFactory()
    membership.organization.plan = plan
    membership.organization.save()
    return membership


def _sdk(membership) -> openai.OpenAI:
    raw = api_key_create(
        organization=membership.organization, name="live", actor=Actor.for_system("tests")
    ).raw_key
    http = httpx.Client(base_url=BASE, transport=SyncAsgiTransport(), timeout=30)
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=raw, max_retries=0, http_client=http)


def _call(sdk, times: int) -> None:
    for i in range(times):
        sdk.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": f"live fox {i}"}]
        )


def _wait_for(web, condition, message: str) -> dict:
    WebDriverWait(web.driver, 3 * POLL_SECONDS).until(
        lambda d: condition(web.js(COUNTERS)), message
    )
    return web.js(COUNTERS)


def _hide(web, hidden: bool) -> None:
    """What the browser does when the tab goes to the background (or comes back)."""
    web.js(
        "Object.defineProperty(document, 'hidden', {value: arguments[0], configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));",
        hidden,
    )


def test_counters_change_in_place_after_sdk_calls_and_pause_in_a_hidden_tab(
    web, owner, screenshots
):
    sdk = _sdk(owner)
    web.driver.get_log("browser")  # start with an empty console log
    web.log_in(owner.user.email, PASSWORD)
    web.js("window.__notReloaded = true;")
    start = web.js(COUNTERS)
    assert (start["requests"], start["percent"], start["meter"]) == ("0", "0", 0)
    assert Decimal(start["cost"]) == 0

    _call(sdk, 4)
    now = _wait_for(web, lambda c: c["requests"] == "4", "the request counter did not move")
    assert now["marker"], "the page was reloaded"
    assert (now["percent"], now["meter"]) == ("20", 20)  # 4 of 20
    assert int(now["tokens"].replace(",", "")) > 0 and Decimal(now["cost"]) > 0
    assert web.path == "/dashboard/"

    # In a hidden tab nothing is fetched; shown again, it catches up at once.
    _hide(web, True)
    polls = web.js(COUNTERS)["polls"]
    _call(sdk, 2)
    time.sleep(POLL_SECONDS + 1)
    hidden = web.js(COUNTERS)
    assert (hidden["polls"], hidden["requests"]) == (polls, "4")
    _hide(web, False)
    back = _wait_for(web, lambda c: c["requests"] == "6", "no refresh when shown again")
    assert back["polls"] == polls + 1 and back["marker"]
    assert (back["percent"], back["meter"]) == ("30", 30)

    # The live status beside the heading fits a phone, like the rest of the page.
    assert web.find("[data-live-status]").is_displayed()
    for width, height in (DESKTOP, PHONE):
        set_viewport(web.driver, width, height, mobile=width == PHONE[0])
        web.js("document.querySelector('[data-testid=quota]').scrollIntoView();")
        assert web.driver.save_screenshot(str(screenshots / f"dashboard-live-{width}.png"))
        assert web.js(NO_HORIZONTAL_OVERFLOW), width
    set_viewport(web.driver, *DESKTOP)

    problems = [
        entry["message"]
        for entry in web.driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "overview" in entry["message"]
    ]
    assert problems == []
