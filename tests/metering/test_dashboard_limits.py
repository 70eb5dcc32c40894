"""The dashboard overview's limits card: the month's usage against the organization's quota and
each live key's use of today's (sliding 24 h) and this minute's windows."""

import re

import pytest

from accounts.actors import Actor
from billing.models import Plan
from keys.services import api_key_create
from metering import limiter
from metering.selectors import organization_limit_overview
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_limiter():
    limiter.reset_state()
    yield
    limiter.reset_state()


@pytest.fixture
def owner(db):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    plan = Plan.objects.create(
        slug="meters",
        name="Meters",
        requests_per_minute=60,
        requests_per_day=1_000,
        tokens_per_day=50_000,
        monthly_request_quota=3_000,
        monthly_token_quota=None,
    )
    membership = MembershipFactory()
    membership.organization.plan = plan
    membership.organization.save()
    return membership


def _use(raw_key: str, times: int) -> int:
    client = AsgiTestClient()
    tokens = 0
    for _ in range(times):
        response = client.post(
            "/v1/chat/completions",
            data={"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}]},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        )
        assert response.status_code == 200
        tokens += response.json()["usage"]["total_tokens"]
    return tokens


def test_the_overview_shows_the_months_quota_and_each_keys_windows(owner, client):
    organization = owner.organization
    busy = api_key_create(organization=organization, name="busy", actor=Actor.for_system("t"))
    api_key_create(organization=organization, name="idle", actor=Actor.for_system("t"))
    tokens = _use(busy.raw_key, 3)

    overview = organization_limit_overview(organization)
    assert overview["requests"] == {"used": 3, "limit": 3_000, "percent": 0}
    assert overview["tokens"]["limit"] is None  # no token quota: unlimited
    rows = {row["key"].name: row["meters"] for row in overview["keys"]}
    assert rows["busy"] == [
        {"used": 3, "limit": 1_000, "percent": 0},
        {"used": tokens, "limit": 50_000, "percent": round(100 * tokens / 50_000)},
        {"used": 3, "limit": 60, "percent": 5},
    ]
    assert rows["idle"][0] == {"used": 0, "limit": 1_000, "percent": 0}

    client.force_login(owner.user)
    page = client.get("/dashboard/").content.decode()
    card = page[page.index('data-testid="quota"') :]
    assert "Requests this month" in card
    assert re.search(r">3</span>\s*<span class=\"muted nowrap\">/ 3,000</span>", card)
    assert "unlimited" in card
    table = card[card.index('data-testid="key-limits"') :]
    assert "busy" in table and "idle" in table
    assert "3 / 1,000" in table and "3 / 60" in table


def test_an_organization_without_limits_sees_unlimited(db, client):
    membership = MembershipFactory()
    membership.organization.plan = Plan.objects.get(slug="enterprise")
    membership.organization.save()
    client.force_login(membership.user)
    page = client.get("/dashboard/").content.decode()
    card = page[page.index('data-testid="quota"') :]
    assert card.count("unlimited") >= 2
