"""Fixtures for the key tests: fast members, issued keys, clean process-level caches.

Process-level state (the verification module's per-process layer, the last-used bookkeeping)
lives outside the database and the cache, so it is reset around every test here.
"""

import functools

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client

from accounts.actors import Actor
from accounts.models import Membership, Organization, Role, User
from keys import touch, verification
from keys.services import IssuedKey, api_key_create
from tests.factories import PASSWORD, MembershipFactory


@pytest.fixture(autouse=True)
def _fresh_key_process_state():
    verification.clear_local()
    touch.reset()
    yield
    touch.flush()  # no background write of this test may land in the next one
    verification.clear_local()
    touch.reset()


@functools.cache
def password_hash() -> str:
    """One real (argon2) hash of PASSWORD, shared by the users of these tests.

    Logging in with PASSWORD works as usual; the suite pays for one slow hash instead of one
    per user.
    """
    return make_password(PASSWORD)


def make_member(
    organization: Organization | None = None, role: str = Role.OWNER, **kwargs
) -> Membership:
    if organization is not None:
        kwargs["organization"] = organization
    # "!" marks an unusable password (nothing to hash); then the shared real hash.
    membership = MembershipFactory(role=role, user__password="!", **kwargs)
    User.objects.filter(pk=membership.user_id).update(password=password_hash())
    membership.user.password = password_hash()
    return membership


@pytest.fixture
def member_factory(db):
    """make_member(organization=None, role="owner") -> Membership (a new user)."""
    return make_member


@pytest.fixture
def owner(db) -> Membership:
    """A user who owns an organization on the free plan (overrides tests/conftest.py's, with a
    shared password hash so that creating users stays cheap)."""
    return make_member(role=Role.OWNER)


@pytest.fixture
def org(owner) -> Organization:
    return owner.organization


@pytest.fixture
def other_owner(db) -> Membership:
    """The owner of a second, unrelated organization."""
    return make_member(role=Role.OWNER)


def actor_for(membership: Membership, ip: str = "203.0.113.7") -> Actor:
    return Actor(user=membership.user, role=membership.role, ip=ip, user_agent="pytest")


@pytest.fixture
def make_key(db, django_capture_on_commit_callbacks):
    """make_key(organization, *, actor=None, prime=True, **fields) -> IssuedKey.

    Issues a key through the service. With `prime` the service's on-commit work runs as it
    would after a real commit (the verifier is cached, so the first use costs no argon2);
    without it the cache forgets the key, which is then cold, as after a cache flush.
    """

    def make(
        organization: Organization, *, actor: Actor | None = None, prime: bool = True, **fields
    ) -> IssuedKey:
        fields.setdefault("name", "test key")
        actor = actor or Actor.for_system("tests")
        with django_capture_on_commit_callbacks(execute=True):
            issued = api_key_create(organization=organization, actor=actor, **fields)
        if not prime:
            verification.forget(issued.api_key.key_id)
        return issued

    return make


@pytest.fixture
def issued(make_key, org) -> IssuedKey:
    """A live key of `org` with the default scope (inference), verifier primed."""
    return make_key(org, name="backend")


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.fixture
def api_client() -> Client:
    return Client()
