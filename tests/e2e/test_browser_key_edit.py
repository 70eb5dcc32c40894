"""Editing a key in a real Chromium: a member cannot give their key more than they hold; what
they hold is saved and shown on the key's page; the key's page links its rotation lineage."""

import pytest

from accounts.models import Role
from keys.models import ApiKey
from keys.services import api_key_create
from tests.factories import PASSWORD, AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.keys.conftest import actor_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_member_cannot_widen_their_key_in_the_browser(web):
    owner = MembershipFactory()
    member = MembershipFactory(organization=owner.organization, role=Role.MEMBER)
    ModelPriceFactory(model=AIModelFactory(name="demo-chat"))
    ModelPriceFactory(model=AIModelFactory(name="demo-embed"))
    key = api_key_create(
        organization=owner.organization,
        actor=actor_for(member),
        name="member key",
        scopes=["inference"],
    ).api_key
    web.log_in(member.user.email, PASSWORD)

    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    web.find(f'tr[data-key-id="{key.key_id}"] [data-testid="key-link"]').click()
    web.wait_for_path(f"/dashboard/keys/{key.key_id}/")
    web.find('[data-testid="edit-key"]').click()
    web.wait_for_path(f"/dashboard/keys/{key.key_id}/edit/")
    assert "You can grant: inference, usage:read" in web.find('[data-testid="held-scopes"]').text

    web.find('input[name="scopes"][value="keys:write"]').click()
    web.find('input[name="scopes"][value="admin"]').click()
    web.submit("Save key")
    assert web.path == f"/dashboard/keys/{key.key_id}/edit/"
    assert "keys:write" in web.find(".errorlist").text
    key.refresh_from_db()
    assert key.scopes == ["inference"]

    # Untick what they do not hold, tick what they do, narrow the models: saved.
    web.find('input[name="scopes"][value="keys:write"]').click()
    web.find('input[name="scopes"][value="admin"]').click()
    web.find('input[name="scopes"][value="usage:read"]').click()
    web.find('input[name="models"][value="demo-chat"]').click()
    web.fill({"id_name": "member key v2"})
    web.submit("Save key")
    web.wait_for_path(f"/dashboard/keys/{key.key_id}/")
    assert "is saved" in web.find(".messages").text
    assert web.find('[data-testid="key-scopes"]').text.split() == ["inference", "usage:read"]
    assert web.find('[data-testid="key-models"]').text == "demo-chat"
    key = ApiKey.objects.get(pk=key.pk)
    assert (key.name, key.scopes, key.allowed_models) == (
        "member key v2",
        ["inference", "usage:read"],
        ["demo-chat"],
    )
