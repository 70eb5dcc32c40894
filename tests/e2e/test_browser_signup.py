"""Sign up, log out, log in, switch organization and look at the dashboard in a real Chromium."""

import os
from pathlib import Path

import pytest
from selenium.webdriver.support.ui import Select

from accounts.models import Membership, Organization, Role, User
from accounts.services import EMAIL_TAKEN
from tests.e2e.conftest import DESKTOP, PHONE, _gone, set_viewport
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NO_HORIZONTAL_OVERFLOW = (
    "return document.documentElement.scrollWidth <= window.innerWidth + 1"
    " && document.body.scrollWidth <= window.innerWidth + 1;"
)


def sign_up(web, *, email, name="Ada Lovelace", organization="Analytical Engines"):
    web.open("/accounts/signup/")
    web.fill(
        {
            "id_email": email,
            "id_full_name": name,
            "id_organization_name": organization,
            "id_password": PASSWORD,
        }
    )
    web.submit("Sign up")


def assert_dashboard_of(web, organization: str) -> None:
    assert web.path == "/dashboard/"
    assert web.find("h1").text == organization


def test_signup_lands_on_the_dashboard_then_logout_and_login_again(web):
    sign_up(web, email="ada@example.com")

    web.wait_for_path("/dashboard/")
    assert_dashboard_of(web, "Analytical Engines")
    assert "Analytical Engines is ready" in web.find(".messages").text
    assert web.find('[data-testid="plan-name"]').text == "Free"
    limits = dict(web.table_rows("plan-limits"))
    assert limits["Requests per minute"] == "10"
    assert limits["Requests per day"] == "100"
    assert limits["Tokens per day"] == "10,000"
    members = web.table_rows("members")
    assert len(members) == 1
    assert "Ada Lovelace" in members[0][0]
    assert "ada@example.com" in members[0][0]
    assert members[0][1] == "Owner"
    # What the browser showed is what the database holds.
    membership = Membership.objects.select_related("organization__plan").get(
        user__email="ada@example.com"
    )
    assert membership.role == Role.OWNER
    assert membership.organization.plan.slug == "free"

    web.button("Log out").click()
    web.wait_for_path("/accounts/login/")
    web.open("/dashboard/")
    web.wait_for_path("/accounts/login/")  # logged out for real: the dashboard sends us away

    web.fill({"id_username": "ada@example.com", "id_password": PASSWORD})
    web.submit("Log in")
    web.wait_for_path("/dashboard/")
    assert_dashboard_of(web, "Analytical Engines")
    assert web.find('[data-testid="plan-name"]').text == "Free"


def test_wrong_password_shows_an_error_and_stays_on_login(web):
    UserFactory(email="ada@example.com")
    web.open("/accounts/login/")
    web.fill({"id_username": "ada@example.com", "id_password": "not-the-password"})
    web.submit("Log in")

    assert web.path == "/accounts/login/"
    assert "correct email" in web.find(".errorlist").text.lower()


def test_signup_with_a_taken_email_shows_the_error_in_the_page(web):
    UserFactory(email="ada@example.com")

    sign_up(web, email="ADA@example.com", organization="Second Engines")

    assert web.path == "/accounts/signup/"
    errors = [e.text for e in web.find_all(".errorlist li")]
    assert EMAIL_TAKEN in errors
    assert web.find("#id_email").get_attribute("aria-invalid") == "true"
    # The form keeps what was typed, except the password.
    assert web.find("#id_email").get_attribute("value") == "ADA@example.com"
    assert web.find("#id_password").get_attribute("value") == ""
    assert User.objects.count() == 1
    assert not Organization.objects.filter(name="Second Engines").exists()


def test_user_in_two_organizations_switches_with_the_top_bar_select(web):
    first = MembershipFactory(organization=OrganizationFactory(name="Alpha Labs"))
    MembershipFactory(
        user=first.user, organization=OrganizationFactory(name="Beta Works"), role=Role.VIEWER
    )
    web.log_in(first.user.email, PASSWORD)
    assert_dashboard_of(web, "Alpha Labs")
    switcher = Select(web.find("#org-switch"))
    assert [o.text for o in switcher.options] == ["Alpha Labs", "Beta Works"]
    assert switcher.first_selected_option.text == "Alpha Labs"

    html = web.find("html")
    switcher.select_by_visible_text("Beta Works")  # no button: the select submits on change
    web.wait(_gone(html), "changing the organization select did not submit")
    web.wait_for_path("/dashboard/")

    assert_dashboard_of(web, "Beta Works")
    assert "Switched to Beta Works" in web.find(".messages").text
    assert Select(web.find("#org-switch")).first_selected_option.text == "Beta Works"
    assert web.table_rows("members")[0][1] == "Viewer"
    # The choice is kept in the session.
    web.open("/dashboard/team/")
    web.wait_for_path("/dashboard/team/")
    assert Select(web.find("#org-switch")).first_selected_option.text == "Beta Works"


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """Where screenshots go: $E2E_SCREENSHOT_DIR to keep them for a look, else a temp dir."""
    path = Path(os.environ.get("E2E_SCREENSHOT_DIR") or tmp_path / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_stylesheet_is_served_and_applied(web):
    web.open("/accounts/login/")
    web.wait_for_path("/accounts/login/")

    sheets = web.js(
        "return [...document.styleSheets].filter(s => s.href && s.href.includes('/static/'))"
        ".map(s => s.cssRules.length);"
    )
    assert sheets, "no stylesheet from /static/ was loaded"
    assert all(n > 10 for n in sheets), sheets
    topbar_bg = web.js(
        "return getComputedStyle(document.querySelector('.topbar')).backgroundColor;"
    )
    assert topbar_bg not in ("rgba(0, 0, 0, 0)", "transparent"), topbar_bg
    body_font = web.js("return getComputedStyle(document.body).fontFamily;")
    assert "Times" not in body_font, body_font


@pytest.mark.parametrize(
    "page",
    ["/dashboard/", "/dashboard/team/", "/accounts/signup/", "/accounts/login/"],
)
def test_pages_fit_a_desktop_and_a_phone_screen(web, screenshot_dir, page):
    membership = MembershipFactory(
        user=UserFactory(email="grace.hopper@example.com", full_name="Grace Brewster Hopper"),
        organization=OrganizationFactory(name="Compilers & Languages Incorporated"),
    )
    MembershipFactory(
        user=membership.user, organization=OrganizationFactory(name="Second Organization")
    )
    MembershipFactory(organization=membership.organization, role=Role.MEMBER)
    if page.startswith("/dashboard/"):
        web.log_in(membership.user.email, PASSWORD)
    web.open(page)
    web.wait_for_path(page)
    name = page.strip("/").replace("/", "-")

    shots = {}
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        set_viewport(web.driver, width, height, mobile=label == "phone")
        assert web.js("return window.innerWidth;") == width
        shots[label] = screenshot_dir / f"{name}-{label}-{width}x{height}.png"
        assert web.driver.save_screenshot(str(shots[label]))
        assert shots[label].stat().st_size > 5_000
        assert web.js(NO_HORIZONTAL_OVERFLOW), (
            f"{page} overflows horizontally at {width}px: scrollWidth="
            f"{web.js('return document.documentElement.scrollWidth;')}"
        )
    # The top bar stays usable on the phone: the brand and the logged-in controls are visible.
    assert web.find(".brand").is_displayed()
    if page.startswith("/dashboard/"):
        assert web.button("Log out").is_displayed()
        assert web.find("#org-switch").is_displayed()
        assert "Compilers & Languages Incorporated" in web.find("body").text
