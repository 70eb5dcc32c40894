"""Fixtures for the gateway tests: key contexts and an operator client. The model factories
are in tests/factories.py; tests/conftest.py drops the per-process snapshots around each test."""

import pytest
from django.test import Client

from keys.context import KeyContext
from tests.factories import AIModelFactory, ModelPriceFactory, UpstreamFactory, UserFactory  # noqa: F401


def key_context(
    *, models: tuple[str, ...] | None = None, test_mode: bool = False, **overrides
) -> KeyContext:
    """A KeyContext as keys/verification.py builds it, without a key in the database."""
    fields = {
        "pk": 1,
        "key_id": "k1",
        "name": "test key",
        "organization_id": 1,
        "organization_slug": "org",
        "plan_slug": "free",
        "scopes": frozenset({"inference"}),
        "models": models,
        "test_mode": test_mode,
        "limits": {},
        "expires_at": None,
        "revoked_at": None,
        "created_by_id": None,
    }
    fields.update(overrides)
    return KeyContext(**fields)


@pytest.fixture
def operator(db) -> Client:
    """A client logged in as a superuser (an operator in Django admin)."""
    user = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client
