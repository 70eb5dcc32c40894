"""Fixtures of the durability tests: the production setup's Redis and an unlimited key."""

import time

import pytest

from accounts.actors import Actor
from aibaas.gateway.models import AIModel
from billing.models import Plan
from keys.services import api_key_create
from tests.factories import AIModelFactory, MembershipFactory
from tests.metering.durability.production import REDIS_CONF
from tests.redis_server import redis_process, redis_server_available


@pytest.fixture
def private_redis():
    """A redis-server of the test's own, run as production runs it (deploy/redis.conf)."""
    if not redis_server_available():
        pytest.skip("needs the redis-server binary for a private Redis to kill")
    with redis_process(REDIS_CONF) as server:
        yield server


@pytest.fixture
def metered_key(db) -> str:
    """The raw key of an organization whose plan has no rate limit and a monthly quota far
    above the tests' (so the quota counter is kept, for reconcile_usage), for demo-chat."""
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)
    plan = Plan.objects.create(
        slug=f"metered{time.monotonic_ns()}",
        name="metered",
        monthly_request_quota=10_000_000,
        monthly_token_quota=10_000_000_000,
    )
    organization = MembershipFactory().organization
    organization.plan = plan
    organization.save()
    issued = api_key_create(organization=organization, name="load", actor=Actor.for_system("t"))
    return issued.raw_key
