import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import Membership, Organization, Role
from accounts.tenancy import SESSION_KEY
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

DASHBOARD_PAGES = ["dashboard:overview", "dashboard:team"]


# Everyone logs in with force_login: no (deliberately slow, argon2) password hashing needed.


@pytest.fixture
def alice():
    return MembershipFactory(
        user__email="alice@alpha.example",
        user__full_name="Alice Alpha",
        user__password=None,
        organization__name="Alpha",
    )


@pytest.fixture
def bob():
    return MembershipFactory(
        user__email="bob@bravo.example",
        user__full_name="Bob Bravo",
        user__password=None,
        organization__name="Bravo",
    )


def _set_session_org(client, organization_id) -> None:
    session = client.session
    session[SESSION_KEY] = organization_id
    session.save()


def _switch(client, organization_id):
    return client.post(
        reverse("dashboard:organization_switch"), {"organization": organization_id}, follow=True
    )


def _dashboard_urls() -> list[tuple[str, str]]:
    """Every route of the dashboard namespace (including ones added later), with sample args."""
    samples = {"int": "1", "str": "x", "slug": "x", "uuid": "00000000-0000-0000-0000-000000000000"}
    prefix, resolver = get_resolver().namespace_dict["dashboard"]

    def walk(patterns, base):
        for pattern in patterns:
            route = str(pattern.pattern)
            for name, converter in pattern.pattern.converters.items():
                kind = type(converter).__name__.removesuffix("Converter").lower()
                route = route.replace(f"<{kind}:{name}>", samples.get(kind, "x"))
                route = route.replace(f"<{name}>", samples["str"])
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, base + route)
            elif isinstance(pattern, URLPattern):
                yield pattern.name or route, "/" + base + route

    return sorted(walk(resolver.url_patterns, prefix))


# --- Isolation -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", DASHBOARD_PAGES)
def test_dashboard_pages_never_show_another_organizations_name_or_members(client, alice, bob, page):
    MembershipFactory(
        organization=bob.organization, user__email="carol@bravo.example", user__password=None
    )
    client.force_login(alice.user)

    response = client.get(reverse(page))

    assert response.status_code == 200
    assert b"Alpha" in response.content
    assert b"alice@alpha.example" in response.content
    for foreign in (b"Bravo", b"bob@bravo.example", b"Bob Bravo", b"carol@bravo.example"):
        assert foreign not in response.content
    assert response.context["current_organization"] == alice.organization
    assert list(response.context["members"]) == [alice]


def test_each_user_sees_only_their_own_organization(client, alice, bob):
    client.force_login(bob.user)
    response = client.get(reverse("dashboard:overview"))
    assert b"Bravo" in response.content
    assert b"Alpha" not in response.content
    assert b"alice@alpha.example" not in response.content


# --- Switching -------------------------------------------------------------------------------


def test_member_of_two_organizations_can_switch_and_then_sees_the_other(client, alice, bob):
    MembershipFactory(user=alice.user, organization=bob.organization, role=Role.VIEWER)
    client.force_login(alice.user)
    first = client.get(reverse("dashboard:overview"))
    assert first.context["current_organization"] == alice.organization
    assert b"Bravo" in first.content  # offered in the switcher

    response = _switch(client, bob.organization.id)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse("dashboard:overview")
    assert response.context["current_organization"] == bob.organization
    assert response.context["current_membership"].role == Role.VIEWER
    assert b"Switched to Bravo" in response.content
    team = client.get(reverse("dashboard:team"))
    assert b"bob@bravo.example" in team.content
    assert client.session[SESSION_KEY] == bob.organization.id

    back = _switch(client, alice.organization.id)
    assert back.context["current_organization"] == alice.organization


@pytest.mark.parametrize(
    "target",
    ["foreign", "missing", "not-a-number", "", "-1", "1 OR 1=1"],
)
def test_switching_to_an_organization_you_are_not_in_is_refused(client, alice, bob, target):
    value = {"foreign": bob.organization.id, "missing": 999_999}.get(target, target)
    client.force_login(alice.user)

    response = _switch(client, value)

    assert response.status_code == 200
    assert response.context["current_organization"] == alice.organization
    assert b"You are not a member of that organization." in response.content
    assert b"Bravo" not in response.content
    assert client.session[SESSION_KEY] == alice.organization.id


def test_switch_only_accepts_post(client, alice):
    client.force_login(alice.user)
    assert client.get(reverse("dashboard:organization_switch")).status_code == 405


def test_tampered_session_organization_falls_back_to_the_users_own(client, alice, bob):
    client.force_login(alice.user)
    _set_session_org(client, bob.organization.id)

    for page in DASHBOARD_PAGES:
        response = client.get(reverse(page))
        assert response.status_code == 200
        assert response.context["current_organization"] == alice.organization
        assert b"Bravo" not in response.content
        assert b"bob@bravo.example" not in response.content
    assert client.session[SESSION_KEY] == alice.organization.id


def test_session_pointing_at_a_left_organization_falls_back(client, alice, bob):
    second = MembershipFactory(user=alice.user, organization=bob.organization)
    client.force_login(alice.user)
    _switch(client, bob.organization.id)
    second.delete()

    response = client.get(reverse("dashboard:overview"))

    assert response.context["current_organization"] == alice.organization
    assert b"Bravo" not in response.content


# --- Access ----------------------------------------------------------------------------------


def test_dashboard_url_list_covers_the_known_pages():
    names = {name for name, _ in _dashboard_urls()}
    assert {"overview", "team", "organization_switch", "organization_create"} <= names


@pytest.mark.parametrize(("name", "url"), _dashboard_urls())
def test_anonymous_users_are_sent_to_login_from_every_dashboard_url(client, name, url):
    response = client.get(url)
    if response.status_code == 405:  # POST-only endpoints
        response = client.post(url)
    assert response.status_code == 302, name
    assert response["Location"].startswith(reverse("accounts:login") + "?next=")


def test_root_leads_anonymous_users_to_login(client):
    response = client.get("/", follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("accounts:login"))


@pytest.mark.parametrize("page", DASHBOARD_PAGES)
def test_user_without_membership_is_sent_to_new_organization_page(client, page):
    client.force_login(UserFactory(password=None))
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:organization_create")


def test_user_without_membership_cannot_switch(client, bob):
    client.force_login(UserFactory(password=None))
    response = client.post(
        reverse("dashboard:organization_switch"), {"organization": bob.organization.id}
    )
    assert response["Location"] == reverse("dashboard:organization_create")


def test_new_organization_page_makes_the_creator_owner_and_switches_to_it(client):
    user = UserFactory(password=None)
    client.force_login(user)
    page = client.get(reverse("dashboard:organization_create"))
    assert page.status_code == 200

    response = client.post(
        reverse("dashboard:organization_create"), {"name": "Gamma Labs"}, follow=True
    )

    organization = Organization.objects.get(name="Gamma Labs")
    assert Membership.objects.get(user=user).organization == organization
    assert Membership.objects.get(user=user).role == Role.OWNER
    assert organization.slug == "gamma-labs"
    assert organization.plan.slug == "free"
    assert response.redirect_chain[-1][0] == reverse("dashboard:overview")
    assert response.context["current_organization"] == organization
    assert b"Gamma Labs created." in response.content


def test_creating_a_second_organization_switches_to_it(client, alice):
    client.force_login(alice.user)
    response = client.post(reverse("dashboard:organization_create"), {"name": "Delta"}, follow=True)
    delta = Organization.objects.get(name="Delta")
    assert response.context["current_organization"] == delta
    assert Membership.objects.get(user=alice.user, organization=delta).role == Role.OWNER
    assert Membership.objects.get(user=alice.user, organization=alice.organization).role == (
        Role.OWNER
    )


@pytest.mark.parametrize("name", ["", "   "])
def test_new_organization_without_a_name_is_a_form_error(client, name):
    client.force_login(UserFactory(password=None))
    response = client.post(reverse("dashboard:organization_create"), {"name": name})
    assert response.status_code == 200
    assert b"errorlist" in response.content
    assert not Organization.objects.exists()


def test_new_organization_with_a_taken_name_gets_its_own_slug(client, alice):
    OrganizationFactory(name="Echo", slug="echo")
    client.force_login(alice.user)
    client.post(reverse("dashboard:organization_create"), {"name": "Echo"})
    assert sorted(Organization.objects.filter(name="Echo").values_list("slug", flat=True)) == [
        "echo",
        "echo-2",
    ]
