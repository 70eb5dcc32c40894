"""Revocation reaches every instance: two server processes sharing PostgreSQL and Redis."""

import time

import httpx
import pytest

from accounts.actors import Actor
from keys.services import api_key_create
from tests.factories import MembershipFactory
from tests.servers import server_process

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _status(base: str, key: str) -> tuple[int, str | None]:
    response = httpx.get(f"{base}/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    code = response.json().get("error", {}).get("code") if response.status_code != 200 else None
    return response.status_code, code


def test_revocation_on_one_instance_is_effective_there_at_once_and_on_the_other_within_1s():
    owner = MembershipFactory()
    issued = api_key_create(
        organization=owner.organization,
        name="shared",
        actor=Actor.for_system(),
        scopes=["inference", "keys:write"],
    )
    key = issued.raw_key
    with server_process() as a, server_process() as b:
        # Both instances have the key warm in their per-process layer.
        for _ in range(3):
            assert _status(a, key) == (200, None)
            assert _status(b, key) == (200, None)

        revoke = httpx.post(
            f"{a}/api/keys/{issued.api_key.key_id}/revoke",
            headers={"Authorization": f"Bearer {key}"},
            json={"reason": "leaked in a screenshot"},
            timeout=5,
        )
        assert revoke.status_code == 200, revoke.text
        revoked_at = time.monotonic()

        assert _status(a, key) == (401, "key_revoked")  # the instance that made the change
        while _status(b, key) != (401, "key_revoked"):
            assert time.monotonic() - revoked_at < 1.0, "instance B still accepts the key"
            time.sleep(0.02)
        assert time.monotonic() - revoked_at < 1.0


def test_rotation_with_zero_grace_expires_the_old_key_on_both_instances_within_1s():
    owner = MembershipFactory()
    issued = api_key_create(
        organization=owner.organization,
        name="rotating",
        actor=Actor.for_system(),
        scopes=["inference", "keys:write"],
    )
    old = issued.raw_key
    with server_process() as a, server_process() as b:
        assert _status(a, old) == (200, None)
        assert _status(b, old) == (200, None)
        rotate = httpx.post(
            f"{b}/api/keys/{issued.api_key.key_id}/rotate",
            headers={"X-API-Key": old},
            json={"grace_seconds": 0},
            timeout=5,
        )
        assert rotate.status_code == 201, rotate.text
        new = rotate.json()["key"]
        rotated_at = time.monotonic()
        assert _status(b, old) == (401, "key_expired")
        assert _status(b, new) == (200, None)
        while _status(a, old) != (401, "key_expired"):
            assert time.monotonic() - rotated_at < 1.0, "instance A still accepts the old key"
            time.sleep(0.02)
        assert _status(a, new) == (200, None)
