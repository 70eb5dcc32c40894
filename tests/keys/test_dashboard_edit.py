"""/dashboard/keys/<id>/ and /edit/: a key's settings, lineage and usage; editing it with the
API's rules (never more than the editor holds); SDK snippets when a key is created."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import AuditAction, AuditEvent, Role
from keys.models import ApiKey
from keys.services import api_key_rotate
from metering.services import usage_record
from metering.usage import UsageEventData
from tests.factories import AIModelFactory, ModelPriceFactory
from tests.keys.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue(db):
    for name in ("demo-chat", "demo-embed"):
        ModelPriceFactory(model=AIModelFactory(name=name))
    ModelPriceFactory(model=AIModelFactory(name="retired", enabled=False))


def _edit(key) -> str:
    return f"/dashboard/keys/{key.key_id}/edit/"


def _form(key, **changes) -> dict:
    data = {
        "name": key.name,
        "scopes": key.scopes,
        "models": key.allowed_models or [],
        "expires": "keep",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_an_owner_edits_every_field(client, owner, make_key, catalogue):
    key = make_key(owner.organization, name="old", actor=actor_for(owner)).api_key
    client.force_login(owner.user)
    page = client.get(_edit(key)).content.decode()
    # The allow-list is chosen from the enabled, priced models.
    assert 'value="demo-chat"' in page and 'value="demo-embed"' in page
    assert 'value="retired"' not in page
    response = client.post(
        _edit(key),
        _form(
            key,
            name="new name",
            scopes=["inference", "usage:read"],
            models=["demo-chat"],
            expires="30d",
            requests_per_minute="5",
        ),
    )
    assert response.status_code == 302
    assert response["Location"] == f"/dashboard/keys/{key.key_id}/"
    key.refresh_from_db()
    assert (key.name, key.scopes, key.allowed_models) == (
        "new name",
        ["inference", "usage:read"],
        ["demo-chat"],
    )
    assert key.requests_per_minute == 5
    assert key.expires_at > timezone.now() + timedelta(days=29)
    assert AuditEvent.objects.filter(action=AuditAction.KEY_UPDATED, target_id=key.key_id).exists()


def test_a_member_cannot_widen_their_key_beyond_what_they_hold(
    client, member_factory, org, make_key
):
    member = member_factory(organization=org, role=Role.MEMBER)
    key = make_key(org, name="mine", actor=actor_for(member), scopes=["inference"]).api_key
    client.force_login(member.user)
    page = client.get(_edit(key)).content.decode()
    assert "You can grant: inference, usage:read" in page
    response = client.post(_edit(key), _form(key, scopes=["inference", "keys:write"]))
    assert response.status_code == 200
    assert "keys:write" in response.content.decode()
    assert response.context["form"].errors
    key.refresh_from_db()
    assert key.scopes == ["inference"]
    # What they hold they may give.
    client.post(_edit(key), _form(key, scopes=["inference", "usage:read"]))
    key.refresh_from_db()
    assert key.scopes == ["inference", "usage:read"]


def test_a_member_cannot_edit_someone_elses_key(client, member_factory, org, owner, make_key):
    member = member_factory(organization=org, role=Role.MEMBER)
    key = make_key(org, name="owners", actor=actor_for(owner)).api_key
    client.force_login(member.user)
    response = client.post(_edit(key), _form(key, name="hijacked"))
    assert response.status_code == 200
    assert "Members can only change the keys they created." in response.content.decode()
    key.refresh_from_db()
    assert key.name == "owners"


def test_a_limit_above_the_plan_is_a_field_error(client, owner, make_key):
    key = make_key(owner.organization, actor=actor_for(owner)).api_key
    client.force_login(owner.user)
    plan_rpm = owner.organization.plan.requests_per_minute
    response = client.post(_edit(key), _form(key, requests_per_minute=str(plan_rpm + 1)))
    assert response.status_code == 200
    assert "requests_per_minute" in response.context["form"].errors
    key.refresh_from_db()
    assert key.requests_per_minute is None


def test_a_model_outside_the_catalogue_is_refused(client, owner, make_key, catalogue):
    key = make_key(owner.organization, actor=actor_for(owner)).api_key
    client.force_login(owner.user)
    response = client.post(_edit(key), _form(key, models=["gpt-17"]))
    assert "models" in response.context["form"].errors
    key.refresh_from_db()
    assert key.allowed_models is None


def test_another_organizations_key_cannot_be_edited(client, owner, other_owner, make_key):
    key = make_key(other_owner.organization, name="theirs").api_key
    client.force_login(owner.user)
    response = client.post(_edit(key), {"name": "mine now", "scopes": ["inference"]})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).name == "theirs"
    assert client.get(f"/dashboard/keys/{key.key_id}/").status_code == 302


def test_the_detail_page_shows_lineage_limits_and_usage(client, owner, make_key):
    old = make_key(owner.organization, name="rotating", actor=actor_for(owner)).api_key
    new = api_key_rotate(api_key=old, actor=actor_for(owner), grace=timedelta(0)).api_key
    usage_record(
        events=[
            UsageEventData(
                request_id=f"req-{i}",
                organization_id=owner.organization_id,
                api_key_id=new.pk,
                key_id=new.key_id,
                model="demo-chat",
                endpoint="chat.completions",
                status_code=200,
                input_tokens=10,
                output_tokens=5,
                cost=Decimal("0.00000100"),
                latency_ms=40,
            )
            for i in range(3)
        ]
    )
    client.force_login(owner.user)
    html = client.get(f"/dashboard/keys/{new.key_id}/").content.decode()
    assert f'href="/dashboard/keys/{old.key_id}/"' in html  # rotated from
    assert 'data-testid="total-requests">3<' in html
    assert 'data-testid="total-cost">$0.00000300<' in html
    assert "Requests: 3 requests in total" in html
    old_html = client.get(f"/dashboard/keys/{old.key_id}/").content.decode()
    assert f'href="/dashboard/keys/{new.key_id}/"' in old_html  # rotated to
    assert 'data-testid="total-requests">0<' in old_html


def test_the_created_page_shows_sdk_snippets_with_this_servers_base_url(client, owner):
    client.force_login(owner.user)
    response = client.post(
        "/dashboard/keys/new/", {"name": "sdk", "scopes": ["inference"], "models": "demo-chat"}
    )
    html = response.content.decode()
    for language in ("python", "javascript", "curl"):
        assert f'data-testid="snippet-{language}"' in html
    assert 'base_url="http://testserver/v1"' in html
    assert 'baseURL: "http://testserver/v1"' in html
    assert "curl http://testserver/v1/chat/completions" in html
    assert 'model="demo-chat"' in html
