"""Content-Security-Policy in a real Chromium: the dashboard, the account pages, Django admin and
Swagger UI render and run their JavaScript under the policy, and the browser reports no
violation on any of them: neither as a `securitypolicyviolation` event (recorded by a script
installed before every document) nor in the browser's console log."""

import httpx
import pytest
from selenium.webdriver.support.ui import Select

from accounts.models import Role
from tests.e2e.conftest import _gone
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(
    e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " +
    (e.sourceFile || document.location.pathname) + ":" + e.lineNumber + " " + (e.sample || "")
  );
}, true);
"""


@pytest.fixture
def csp_web(web):
    """`web`, recording every CSP violation of every page it loads."""
    script = web.driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": COLLECT_VIOLATIONS}
    )
    web.driver.get_log("browser")  # start with an empty console log
    yield web
    web.driver.execute_cdp_cmd(
        "Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]}
    )
    web.driver.get_log("browser")  # leave none of this test's messages to the next


def violations(web) -> list[str]:
    """The current page's violation events, then every CSP message of the console log since
    the last call."""
    events = web.js("return window.__cspViolations || ['collector missing'];")
    logged = [
        entry["message"]
        for entry in web.driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    return events + logged


def visit(web, path: str) -> None:
    web.open(path)
    web.wait_for_path(path.split("?")[0])
    assert violations(web) == [], path


def test_every_page_has_the_policy_header(live_server):
    for path in ("/accounts/login/", "/accounts/signup/", "/admin/login/", "/api/docs/"):
        response = httpx.get(live_server.url + path)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy, path
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy, path
        assert "frame-ancestors 'none'" in policy, path


def test_the_policy_is_enforced_and_violations_are_seen(csp_web):
    visit(csp_web, "/accounts/login/")

    csp_web.js(
        "var s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
        "document.body.appendChild(s);"
        "document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">x</p>');"
    )

    seen: list[str] = []
    csp_web.wait(
        lambda d: (
            (seen.extend(violations(csp_web)) or True)
            and any("inline script violates" in v for v in seen)  # the console log's
            and any(v.startswith("style-src") for v in seen)
        ),
        "the violations were not reported",
    )
    assert csp_web.js("return window.__ran === undefined;")
    assert any(v.startswith("script-src") for v in seen)


def test_account_pages_render_without_violations(csp_web):
    for path in ("/accounts/signup/", "/accounts/login/", "/accounts/password/reset/"):
        visit(csp_web, path)
        assert csp_web.find("form")
    owner = MembershipFactory()
    csp_web.log_in(owner.user.email, PASSWORD)
    visit(csp_web, "/accounts/password/change/")
    assert csp_web.find("#id_old_password")


def test_dashboard_pages_and_their_scripts_work_under_the_policy(csp_web):
    owner = MembershipFactory(organization=OrganizationFactory(name="Alpha Labs"))
    MembershipFactory(
        user=owner.user, organization=OrganizationFactory(name="Beta Works"), role=Role.ADMIN
    )
    csp_web.log_in(owner.user.email, PASSWORD)
    assert violations(csp_web) == []
    # The stylesheet applies (computed style from app.css, not an inline attribute).
    assert csp_web.js(
        "return getComputedStyle(document.querySelector('.topbar')).display !== 'inline';"
    )

    for path in (
        "/dashboard/",
        "/dashboard/team/",
        "/dashboard/keys/",
        "/dashboard/audit/",
        "/dashboard/usage/",
    ):
        visit(csp_web, path)

    # A key: created, shown once, and the copy button's script runs.
    visit(csp_web, "/dashboard/keys/new/")
    csp_web.fill({"id_name": "csp check"})
    csp_web.submit("Create key")
    csp_web.find('[data-testid="copy"]').click()
    csp_web.wait(lambda d: csp_web.find('[data-testid="copy"]').text == "Copied")
    assert violations(csp_web) == []

    # The audit log's filter submits itself on change (a script, not an inline handler).
    visit(csp_web, "/dashboard/audit/")
    html = csp_web.find("html")
    Select(csp_web.find("#action")).select_by_value("key.created")
    csp_web.wait(_gone(html), "the audit filter did not submit")
    csp_web.wait(lambda d: "action=key.created" in d.current_url)
    assert "key.created" in csp_web.find("body").text
    assert violations(csp_web) == []

    # The organization switcher too.
    html = csp_web.find("html")
    Select(csp_web.find("#org-switch")).select_by_visible_text("Beta Works")
    csp_web.wait(_gone(html), "the organization select did not submit")
    csp_web.wait_for_path("/dashboard/")
    assert "Switched to Beta Works" in csp_web.find(".messages").text
    assert violations(csp_web) == []


def test_django_admin_and_its_scripts_work_under_the_policy(csp_web):
    MembershipFactory(organization=OrganizationFactory(slug="alpha"))
    MembershipFactory(organization=OrganizationFactory(slug="bravo"))
    operator = UserFactory(email="root@ops.example", is_staff=True, is_superuser=True)
    visit(csp_web, "/admin/login/")
    csp_web.fill({"id_username": operator.email, "id_password": PASSWORD})
    csp_web.find('#login-form input[type="submit"]').click()
    csp_web.wait_for_path("/admin/")
    assert violations(csp_web) == []
    assert "Site administration" in csp_web.find("body").text

    # Change list with actions: actions.js counts the selection.
    visit(csp_web, "/admin/accounts/organization/")
    csp_web.find("#action-toggle").click()
    csp_web.wait(lambda d: "2 of 2 selected" in csp_web.find(".action-counter").text)
    # nav_sidebar.js filters the sidebar.
    csp_web.find("#nav-filter").send_keys("audit")
    csp_web.wait(
        lambda d: not csp_web.find("tr.model-organization").is_displayed(),
        "the sidebar filter did not run",
    )
    assert violations(csp_web) == []

    # Change list without actions (read-only audit log: Django's inline <style>, allowed by hash).
    visit(csp_web, "/admin/accounts/auditevent/")

    # Change form with an inline: inlines.js adds a row, the autocomplete widget (select2) loads.
    organization = OrganizationFactory(slug="charlie")
    visit(csp_web, f"/admin/accounts/organization/{organization.pk}/change/")
    rows = len(csp_web.find_all("#memberships-group tr.form-row"))
    csp_web.find("#memberships-group .add-row a").click()
    csp_web.wait(lambda d: len(csp_web.find_all("#memberships-group tr.form-row")) > rows)
    csp_web.wait(lambda d: csp_web.find_all("#memberships-group .select2-container"))
    assert violations(csp_web) == []


def test_swagger_ui_shows_the_operations_under_the_policy(csp_web):
    visit(csp_web, "/api/docs/")

    csp_web.wait(lambda d: len(csp_web.find_all(".opblock")) > 5, "Swagger UI showed nothing")
    summaries = [el.text for el in csp_web.find_all(".opblock-summary-path")]
    assert "/api/keys" in summaries
    # Expanding an operation is Swagger UI's script at work.
    csp_web.find(".opblock-summary").click()
    csp_web.wait(lambda d: csp_web.find_all(".opblock-body"), "the operation did not open")
    assert violations(csp_web) == []


def test_pages_name_their_icon_so_the_browser_asks_for_no_missing_favicon_ico(csp_web):
    """Without a <link rel="icon">, Chromium asks for /favicon.ico and logs its 404 as an error
    on every page."""
    visit(csp_web, "/accounts/login/")
    href = csp_web.js("return document.querySelector('link[rel=icon]').href;")
    response = httpx.get(href)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/svg+xml")
    assert "<svg" in response.text
