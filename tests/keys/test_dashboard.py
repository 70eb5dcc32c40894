"""/dashboard/keys/: list, create (the key shown once), revoke, rotate, roles and tenancy."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditAction, AuditEvent, Role
from keys import format as key_format
from keys.models import ApiKey, ApiKeyStatus
from keys.services import api_key_revoke
from tests.keys.conftest import actor_for, bearer

pytestmark = pytest.mark.django_db

LIST = "/dashboard/keys/"
CREATE = "/dashboard/keys/new/"


def shown_key(response) -> str:
    """The raw key on a show-once page."""
    match = re.search(r'data-testid="raw-key"[^>]*value="([^"]+)"', response.content.decode())
    assert match, response.content.decode()[:2000]
    return match.group(1)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def dashboard_owner(org):
    return org.memberships.get(role=Role.OWNER)


@pytest.fixture
def dashboard(client, owner):
    client.force_login(owner.user)
    return client


def test_list_shows_the_organizations_keys_with_hint_scopes_and_status(
    dashboard, org, make_key, other_owner, time_machine
):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    active = make_key(org, name="active one", scopes=["inference", "usage:read"]).api_key
    revoked = make_key(org, name="revoked one").api_key
    api_key_revoke(api_key=revoked, actor=actor_for(dashboard_owner(org)), reason="old")
    expiring = make_key(org, name="expiring one", expires_at=now + timedelta(minutes=5)).api_key
    foreign = make_key(other_owner.organization, name="foreign one").api_key
    time_machine.move_to(now + timedelta(minutes=10), tick=False)

    html = dashboard.get(LIST).content.decode()
    rows = dict(re.findall(r'<tr data-key-id="([^"]+)">(.*?)</tr>', html, flags=re.S))
    assert set(rows) == {active.key_id, revoked.key_id, expiring.key_id}
    assert active.hint in rows[active.key_id]
    assert "usage:read" in rows[active.key_id]
    assert 'badge ok">active' in rows[active.key_id]
    assert 'badge danger">revoked' in rows[revoked.key_id]
    assert 'badge warn">expired' in rows[expiring.key_id]
    assert foreign.key_id not in html and foreign.hint not in html and "foreign one" not in html


@pytest.mark.parametrize(
    ("status", "expected"),
    [("active", {"a"}), ("revoked", {"r"}), ("", {"a", "r"}), ("bogus", {"a", "r"})],
)
def test_list_filters_by_status(dashboard, org, make_key, status, expected):
    keys = {"a": make_key(org, name="a").api_key, "r": make_key(org, name="r").api_key}
    api_key_revoke(api_key=keys["r"], actor=actor_for(dashboard_owner(org)))
    html = dashboard.get(LIST, {"status": status}).content.decode()
    shown = {name for name, key in keys.items() if f'data-key-id="{key.key_id}"' in html}
    assert shown == expected


def test_create_shows_the_raw_key_once_and_never_again(dashboard, org):
    response = dashboard.post(
        CREATE,
        {
            "name": "web app",
            "scopes": ["inference", "usage:read"],
            "models": "demo-small, demo-large",
            "expires_in": "30d",
            "requests_per_minute": "6",
        },
    )
    assert response.status_code == 200
    raw = shown_key(response)
    assert "no-store" in response["Cache-Control"]
    assert "You will not see it again" in response.content.decode()
    # The snippets read the key from the environment: the page says how to put it there.
    assert "export AIBAAS_API_KEY=sk_live_…" in response.content.decode()
    key = ApiKey.objects.get()
    assert key_format.parse(raw).key_id == key.key_id
    assert key.organization == org
    assert key.scopes == ["inference", "usage:read"]
    assert key.allowed_models == ["demo-large", "demo-small"]
    assert key.requests_per_minute == 6
    assert key.expires_at > timezone.now() + timedelta(days=29)
    assert AuditEvent.objects.filter(action=AuditAction.KEY_CREATED, target_id=key.key_id).exists()

    listed = dashboard.get(LIST)
    html = listed.content.decode()
    assert key.hint in html
    assert raw not in html
    assert raw[21:64] not in html
    assert raw not in str(dashboard.session.items())
    assert dashboard.get("/v1/key", **bearer(raw)).status_code == 200


def test_create_form_errors_are_shown_and_create_nothing(dashboard):
    response = dashboard.post(CREATE, {"name": "", "scopes": ["root"], "requests_per_minute": "0"})
    assert response.status_code == 200
    form = response.context["form"]
    assert {"name", "scopes", "requests_per_minute"} <= set(form.errors)
    assert 'data-testid="raw-key"' not in response.content.decode()
    assert not ApiKey.objects.exists()


def test_create_past_the_plans_cap_shows_the_error(dashboard, org, make_key):
    for number in range(3):
        make_key(org, name=f"k{number}")
    response = dashboard.post(CREATE, {"name": "fourth", "scopes": ["inference"]})
    assert response.status_code == 200
    assert "allows 3 live API keys" in response.content.decode()
    assert ApiKey.objects.count() == 3


def test_revoke_asks_for_confirmation_then_revokes_with_the_reason(dashboard, issued):
    key = issued.api_key
    url = f"/dashboard/keys/{key.key_id}/revoke/"
    page = dashboard.get(url)
    assert page.status_code == 200
    assert key.hint in page.content.decode()
    assert 'data-testid="confirm-revoke"' in page.content.decode()
    assert ApiKey.objects.get(pk=key.pk).status == ApiKeyStatus.ACTIVE  # a GET changes nothing

    response = dashboard.post(url, {"reason": "laptop stolen"}, follow=True)
    assert response.redirect_chain[-1][0] == LIST
    key.refresh_from_db()
    assert key.status == ApiKeyStatus.REVOKED
    assert key.revoked_reason == "laptop stolen"
    assert any("revoked" in message for message in messages_of(response))
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    assert (event.target_id, event.metadata["reason"]) == (key.key_id, "laptop stolen")
    assert dashboard.get("/v1/key", **bearer(issued.raw_key)).json()["error"]["code"] == (
        "key_revoked"
    )


def test_rotate_shows_the_new_key_once(dashboard, issued):
    key = issued.api_key
    url = f"/dashboard/keys/{key.key_id}/rotate/"
    page = dashboard.get(url)
    assert page.status_code == 200 and 'data-testid="confirm-rotate"' in page.content.decode()

    response = dashboard.post(url, {"grace": "0"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new_raw = shown_key(response)
    new = ApiKey.objects.get(rotated_from=key)
    assert key_format.parse(new_raw).key_id == new.key_id
    assert ApiKey.objects.get(pk=key.pk).status == ApiKeyStatus.EXPIRED
    assert new_raw not in dashboard.get(LIST).content.decode()
    assert dashboard.get("/v1/key", **bearer(new_raw)).status_code == 200
    assert dashboard.get("/v1/key", **bearer(issued.raw_key)).status_code == 401


def test_rotate_with_a_grace_keeps_the_old_key_working(dashboard, issued):
    response = dashboard.post(f"/dashboard/keys/{issued.api_key.pk}/rotate/", {"grace": "1h"})
    assert response.status_code == 200
    old = ApiKey.objects.get(pk=issued.api_key.pk)
    assert old.status == ApiKeyStatus.ACTIVE
    assert old.expires_at == pytest.approx(
        timezone.now() + timedelta(hours=1), abs=timedelta(minutes=1)
    )
    assert dashboard.get("/v1/key", **bearer(issued.raw_key)).status_code == 200


def test_rotating_a_revoked_key_redirects_with_an_error(dashboard, issued):
    api_key_revoke(
        api_key=issued.api_key, actor=actor_for(dashboard_owner(issued.api_key.organization))
    )
    response = dashboard.post(
        f"/dashboard/keys/{issued.api_key.key_id}/rotate/", {"grace": "0"}, follow=True
    )
    assert response.redirect_chain[-1][0] == LIST
    assert any("active key" in message for message in messages_of(response))
    assert not ApiKey.objects.filter(rotated_from=issued.api_key).exists()


# --- roles -----------------------------------------------------------------------------------


def test_viewer_sees_no_create_button_and_cannot_create(client, org, member_factory, issued):
    viewer = member_factory(organization=org, role=Role.VIEWER)
    client.force_login(viewer.user)
    html = client.get(LIST).content.decode()
    assert issued.api_key.hint in html
    assert 'data-testid="new-key"' not in html
    assert f"/dashboard/keys/{issued.api_key.key_id}/revoke/" not in html
    response = client.post(CREATE, {"name": "sneaky", "scopes": ["inference"]})
    assert response.status_code == 200
    assert "Viewers cannot change API keys." in response.content.decode()
    assert 'data-testid="raw-key"' not in response.content.decode()
    assert not ApiKey.objects.filter(name="sneaky").exists()


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_viewer_cannot_revoke_or_rotate(client, org, member_factory, issued, action):
    viewer = member_factory(organization=org, role=Role.VIEWER)
    client.force_login(viewer.user)
    data = {"reason": "x"} if action == "revoke" else {"grace": "0"}
    response = client.post(f"/dashboard/keys/{issued.api_key.key_id}/{action}/", data, follow=True)
    assert any("Viewers cannot" in message for message in messages_of(response))
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert key.status == ApiKeyStatus.ACTIVE
    assert not ApiKey.objects.filter(rotated_from=key).exists()


def test_member_sees_actions_only_on_own_keys_and_cannot_revoke_others(
    client, org, member_factory, make_key
):
    member = member_factory(organization=org, role=Role.MEMBER)
    own = make_key(org, actor=actor_for(member), name="own").api_key
    theirs = make_key(org, actor=actor_for(dashboard_owner(org)), name="theirs").api_key
    client.force_login(member.user)
    html = client.get(LIST).content.decode()
    assert 'data-testid="new-key"' in html
    assert f"/dashboard/keys/{own.key_id}/revoke/" in html
    assert f"/dashboard/keys/{theirs.key_id}/revoke/" not in html
    response = client.post(f"/dashboard/keys/{theirs.key_id}/revoke/", {"reason": "x"}, follow=True)
    assert any("only change the keys they created" in m for m in messages_of(response))
    assert ApiKey.objects.get(pk=theirs.pk).status == ApiKeyStatus.ACTIVE
    client.post(f"/dashboard/keys/{own.key_id}/revoke/", {"reason": "mine"})
    assert ApiKey.objects.get(pk=own.pk).status == ApiKeyStatus.REVOKED


# --- tenancy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["revoke", "rotate"])
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("by", ["key_id", "pk"])
def test_another_organizations_key_redirects_with_an_error_and_changes_nothing(
    dashboard, make_key, other_owner, action, method, by
):
    foreign = make_key(other_owner.organization, name="their key").api_key
    url = f"/dashboard/keys/{getattr(foreign, by)}/{action}/"
    data = {"reason": "pwned"} if action == "revoke" else {"grace": "0"}
    response = getattr(dashboard, method)(url, data, follow=True)
    assert response.redirect_chain == [(LIST, 302)]
    assert any("No API key" in message for message in messages_of(response))
    html = response.content.decode()
    assert "their key" not in html and foreign.hint not in html
    after = ApiKey.objects.get(pk=foreign.pk)
    assert (after.status, after.revoked_reason, after.expires_at) == (ApiKeyStatus.ACTIVE, "", None)
    assert not ApiKey.objects.filter(rotated_from=foreign).exists()
    assert 'data-testid="raw-key"' not in html


@pytest.mark.parametrize("ident", ["999999", "nope", "²", "٣", "1" * 40])
@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_unknown_key_redirects_with_an_error(dashboard, ident, action):
    response = dashboard.get(f"/dashboard/keys/{ident}/{action}/", follow=True)
    assert response.redirect_chain == [(LIST, 302)]
    assert any("No API key" in message for message in messages_of(response))


def test_anonymous_visitors_are_sent_to_login(client, issued):
    for url in (LIST, CREATE, f"/dashboard/keys/{issued.api_key.key_id}/revoke/"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/accounts/login/" in response["Location"]
    response = client.post(f"/dashboard/keys/{issued.api_key.key_id}/revoke/", {"reason": "x"})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=issued.api_key.pk).status == ApiKeyStatus.ACTIVE
