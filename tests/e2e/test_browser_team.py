"""The team in two real browsers: an owner invites, the invitee accepts in a browser of their
own and sees the organization with the invited role; a role change and a removal apply to the
invitee's very next page. And every dashboard page fits a 390 px phone, screenshotted at 1280
and 390 px for review."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select

from accounts.actors import Actor
from accounts.models import Membership, Role
from accounts.services import Link, invitation_create, organization_rename
from keys.services import api_key_create
from tests.e2e.conftest import DESKTOP, PHONE, _gone, set_viewport
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NO_HORIZONTAL_OVERFLOW = (
    "return document.documentElement.scrollWidth <= window.innerWidth + 1"
    " && document.body.scrollWidth <= window.innerWidth + 1;"
)
# Elements wider than the screen even when the page itself does not scroll (a clipped table).
CLIPPED = """
return [...document.querySelectorAll('main *')].filter(el => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && (r.right > window.innerWidth + 1) && !el.closest('.table-wrap, pre, .nav');
}).map(el => el.tagName + '.' + el.className).slice(0, 5);
"""
LINK = re.compile(r"https?://[^/\s]+(/accounts/invitations/[^/\s]+/)")


def confirm_and_wait(web, button) -> None:
    """Click a button whose form asks first (data-confirm), say yes, wait for the next page."""
    html = web.find("html")
    button.click()
    web.wait(EC.alert_is_present(), "no confirmation was asked")
    web.driver.switch_to.alert.accept()
    web.wait(_gone(html), "the confirmed form did not submit")
    web.wait(lambda d: d.execute_script("return document.readyState") == "complete")


def test_invite_accept_in_a_second_browser_then_role_change_and_removal(
    web, second_web, mailoutbox
):
    owner = MembershipFactory(
        organization=OrganizationFactory(name="Analytical Engines"),
        user=UserFactory(email="ada@example.com", full_name="Ada Lovelace"),
    )
    web.log_in(owner.user.email, PASSWORD)

    # The owner invites Charles as an admin.
    web.open("/dashboard/team/")
    web.wait_for_path("/dashboard/team/")
    web.fill({"id_email": "charles@example.com"})
    Select(web.find("#id_role")).select_by_value("admin")
    web.submit("Send invitation")
    web.wait_for_path("/dashboard/team/")
    assert "Invitation sent to charles@example.com (Admin)." in web.find(".messages").text
    assert web.table_rows("invitations")[0][0].startswith("charles@example.com")
    [message] = mailoutbox
    path = LINK.search(message.body).group(1)

    # Charles, in his own browser, opens the link and signs up: he lands in the organization.
    charles = second_web
    charles.open(path)
    charles.wait_for_path(path)
    assert "Join Analytical Engines" in charles.find("h1").text
    assert charles.find('[data-testid="invited-role"]').text == "Admin"
    charles.fill({"id_full_name": "Charles Babbage", "id_password": PASSWORD})
    charles.submit("Sign up and join")
    charles.wait_for_path("/dashboard/")
    assert charles.find("h1").text == "Analytical Engines"
    assert "you joined as admin" in charles.find(".messages").text
    assert "your role: Admin" in charles.find("main").text
    assert charles.find_all('nav a[href="/dashboard/audit/"]')  # admins read the audit log
    # The link is used up.
    charles.open(path)
    assert "already accepted" in charles.find("main").text

    # The owner sees him as an admin, and demotes him to viewer.
    web.open("/dashboard/team/")
    web.wait_for_path("/dashboard/team/")
    assert web.find('tr[data-member="charles@example.com"] [data-testid="role"]').text == "Admin"
    assert not web.find_all('[data-testid="invitations"]')
    Select(web.find('tr[data-member="charles@example.com"] select[name="role"]')).select_by_value(
        "viewer"
    )
    web.find('tr[data-member="charles@example.com"] form[action$="/team/role/"] button').click()
    web.wait(lambda d: "Role changed." in web.find(".messages").text)

    # Charles's next page already knows: no audit log tab, no key creation, the audit log
    # itself refused.
    charles.open("/dashboard/keys/")
    charles.wait_for_path("/dashboard/keys/")
    assert not charles.find_all('[data-testid="new-key"]')
    assert not charles.find_all('nav a[href="/dashboard/audit/"]')
    charles.open("/dashboard/audit/")
    charles.wait_for_path("/dashboard/")
    assert "your role: Viewer" in charles.find("main").text

    # The owner removes him (the page asks first); his next request finds no organization.
    confirm_and_wait(
        web, web.find('tr[data-member="charles@example.com"] form[action$="/team/remove/"] button')
    )
    assert "Member removed" in web.find(".messages").text
    assert not Membership.objects.filter(user__email="charles@example.com").exists()
    charles.open("/dashboard/team/")
    charles.wait_for_path("/dashboard/organizations/new/")
    assert "Analytical Engines" not in charles.find("body").text


def _get_pages(user) -> list[str]:
    """Every dashboard page a GET shows (argument-free routes: new pages join by themselves);
    the POST-only routes answer 405, and nothing else is allowed."""
    _, resolver = get_resolver().namespace_dict["dashboard"]
    client = Client()
    client.force_login(user)
    pages = []
    for pattern in resolver.url_patterns:
        route = str(pattern.pattern)
        if not isinstance(pattern, URLPattern) or "<" in route or route.endswith((".csv", ".json")):
            continue
        status = client.get("/dashboard/" + route).status_code
        assert status in (200, 405), (route, status)
        if status == 200:
            pages.append("/dashboard/" + route)
    return pages


def _populated_organization() -> Membership:
    """An organization with long names, several members, keys, invitations and audit events:
    the content that pushes a narrow layout wide."""
    owner = MembershipFactory(
        user=UserFactory(
            email="grace.brewster.murray.hopper@navy-computing-laboratory.example",
            full_name="Grace Brewster Murray Hopper",
        ),
        organization=OrganizationFactory(name="Compilers & Languages Incorporated"),
    )
    organization = owner.organization
    MembershipFactory(user=owner.user, organization=OrganizationFactory(name="Second Organization"))
    for role in (Role.ADMIN, Role.MEMBER, Role.VIEWER):
        MembershipFactory(organization=organization, role=role)
    actor = Actor(user=owner.user, role=Role.OWNER, ip="2001:db8:85a3::8a2e:370:7334")
    for name in ("production backend service", "nightly-evaluation-pipeline"):
        api_key_create(
            organization=organization,
            name=name,
            actor=actor,
            scopes=["inference", "usage:read", "keys:write"],
        )
    invitation_create(
        organization=organization,
        actor=actor,
        email="a.very.long.address.for.an.invitee@subsidiary.example.com",
        role=Role.MEMBER,
        link=Link(base_url="http://testserver"),
    )
    organization_rename(organization=organization, actor=actor, name=organization.name)
    return owner


def test_every_dashboard_page_fits_a_phone_and_is_screenshotted(web, screenshots, mailoutbox):
    owner = _populated_organization()
    web.log_in(owner.user.email, PASSWORD)
    pages = _get_pages(owner.user)
    assert {"/dashboard/", "/dashboard/keys/", "/dashboard/team/", "/dashboard/audit/"} <= set(
        pages
    )
    assert {"/dashboard/settings/", "/dashboard/organizations/new/"} <= set(pages)
    key = owner.organization.api_keys.order_by("name").first()
    pages += [
        f"/dashboard/keys/{key.key_id}/",
        f"/dashboard/keys/{key.key_id}/edit/",
        "/dashboard/audit/?action=key.created&since=2020-01-01",  # filtered
        "/dashboard/audit/?since=01/02/2026&until=yesterday",  # the filters' errors shown
    ]
    problems = []
    for page in pages:
        path, _, query = page.partition("?")
        name = path.strip("/").replace("/", "-") or "dashboard"
        name = name.replace(key.key_id, "key") + ("-filtered" if query else "")
        name += "-errors" if "yesterday" in query else ""
        for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
            set_viewport(web.driver, width, height, mobile=label == "phone")
            web.open(page)
            web.wait(lambda d: d.execute_script("return document.readyState") == "complete")
            if web.path != path:
                problems.append(f"{page}: redirected to {web.path}")
                continue
            inner = web.js("return window.innerWidth;")
            if inner != width:  # a phone widens the layout viewport to fit a too-wide page
                problems.append(f"{page} at {width}px: the page is {inner}px wide")
            shot = screenshots / f"{name}-{width}.png"
            assert web.driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 5_000
            if "yesterday" in query and not web.find_all('[data-testid="audit-filter-errors"]'):
                problems.append(f"{page}: the filters' errors are not shown")
            # The same navigation on every page.
            tabs = [a.get_attribute("href") for a in web.find_all('nav[aria-label="Dashboard"] a')]
            if not any(t.endswith("/dashboard/team/") for t in tabs):
                problems.append(f"{page}: no dashboard navigation")
            if not web.js(NO_HORIZONTAL_OVERFLOW):
                scroll = web.js("return document.documentElement.scrollWidth;")
                problems.append(f"{page} overflows at {width}px: scrollWidth={scroll}")
            clipped = web.js(CLIPPED)
            if clipped:
                problems.append(f"{page} at {width}px: wider than the screen: {clipped}")
        set_viewport(web.driver, *DESKTOP)
    assert problems == []


def test_the_keys_actions_are_on_screen_on_a_phone(web):
    owner = _populated_organization()
    web.log_in(owner.user.email, PASSWORD)
    set_viewport(web.driver, *PHONE, mobile=True)
    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    buttons = web.find_all('[data-testid="keys"] a.btn')
    texts = [b.text for b in buttons]
    assert texts.count("Rotate") == 2 and texts.count("Revoke") == 2, texts  # two keys
    for button in buttons:
        right = web.js("return arguments[0].getBoundingClientRect().right;", button)
        assert button.is_displayed() and right <= PHONE[0], (button.text, right)


def test_invitation_and_account_pages_fit_a_phone(web, screenshots, mailoutbox):
    owner = _populated_organization()
    path = LINK.search(mailoutbox[0].body).group(1)
    del owner
    for page in (path, "/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        for width, height in (DESKTOP, PHONE):
            set_viewport(web.driver, width, height, mobile=width == PHONE[0])
            web.open(page)
            web.wait_for_path(page)
            name = "invitation" if "invitations" in page else page.strip("/").replace("/", "-")
            assert web.driver.save_screenshot(str(screenshots / f"{name}-{width}.png"))
            assert web.js(NO_HORIZONTAL_OVERFLOW), (page, width)
    set_viewport(web.driver, *DESKTOP)
