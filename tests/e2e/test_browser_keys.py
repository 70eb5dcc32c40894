"""API keys in a real Chromium: create (shown once, copy button), use, rotate, revoke."""

import httpx
import pytest
from selenium.webdriver.support.ui import Select

from keys.format import parse
from keys.models import ApiKey
from tests.e2e.conftest import PHONE, set_viewport
from tests.factories import PASSWORD, MembershipFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _v1_key(web, raw: str) -> httpx.Response:
    return httpx.get(f"{web.base_url}/v1/key", headers={"Authorization": f"Bearer {raw}"})


def test_create_a_key_copy_it_once_use_it_rotate_and_revoke_it(web):
    owner = MembershipFactory()
    web.log_in(owner.user.email, PASSWORD)

    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    web.find('[data-testid="new-key"]').click()
    web.wait_for_path("/dashboard/keys/new/")
    web.fill({"id_name": "production backend"})
    web.find('input[name="scopes"][value="usage:read"]').click()
    Select(web.find("#id_expires_in")).select_by_value("30d")
    web.submit("Create key")

    raw = web.find('[data-testid="raw-key"]').get_attribute("value")
    assert parse(raw) is not None
    assert "You will not see it again" in web.find("body").text
    web.find('[data-testid="copy"]').click()
    web.wait(lambda d: web.find('[data-testid="copy"]').text == "Copied")
    key = ApiKey.objects.get(name="production backend")
    assert key.scopes == ["inference", "usage:read"]
    assert key.expires_at is not None

    # The key works with a real HTTP client against the same live server.
    response = _v1_key(web, raw)
    assert response.status_code == 200
    assert response.json()["scopes"] == ["inference", "usage:read"]

    # The list shows the hint, never the key; reloading the "created" page is impossible.
    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    body = web.find("body").text
    assert key.hint in body and raw not in body
    assert raw not in web.driver.page_source

    # Rotate with zero grace: the new key is shown once and the old one is expired at once.
    web.open(f"/dashboard/keys/{key.key_id}/rotate/")
    web.wait_for_path(f"/dashboard/keys/{key.key_id}/rotate/")
    Select(web.find("#id_grace")).select_by_value("0")
    web.submit("Rotate key")
    new_raw = web.find('[data-testid="raw-key"]').get_attribute("value")
    assert new_raw != raw and parse(new_raw) is not None
    assert _v1_key(web, raw).json()["error"]["code"] == "key_expired"
    assert _v1_key(web, new_raw).status_code == 200

    # Revoke the new key with a reason, through the confirmation page.
    new_key = ApiKey.objects.get(rotated_from=key)
    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    web.find(f'tr[data-key-id="{new_key.key_id}"] a.danger').click()
    web.wait_for_path(f"/dashboard/keys/{new_key.key_id}/revoke/")
    web.fill({"id_reason": "leaked in a screenshot"})
    web.submit("Revoke key")
    web.wait_for_path("/dashboard/keys/")
    assert "is revoked" in web.find(".messages").text
    assert _v1_key(web, new_raw).json()["error"]["code"] == "key_revoked"
    new_key.refresh_from_db()
    assert new_key.revoked_reason == "leaked in a screenshot"


def test_keys_page_fits_a_phone(web):
    owner = MembershipFactory()
    web.log_in(owner.user.email, PASSWORD)
    web.open("/dashboard/keys/new/")
    web.wait_for_path("/dashboard/keys/new/")
    web.fill({"id_name": "phone"})
    web.submit("Create key")
    web.wait(lambda d: web.find_all('[data-testid="raw-key"]'), "the new key was not shown")
    set_viewport(web.driver, *PHONE, mobile=True)
    web.open("/dashboard/keys/")
    web.wait_for_path("/dashboard/keys/")
    assert web.js("return window.innerWidth;") == PHONE[0]
    assert web.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
