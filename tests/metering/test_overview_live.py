"""/dashboard/overview.json, the counters the overview refreshes in place: the page's numbers,
the current organization's only, for a logged-in member, read from the rollups (never the raw
usage events) in a handful of queries."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.actors import Actor
from billing.models import Plan
from keys.services import api_key_create
from metering import limiter
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.metering.test_dashboard_limits import _use

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/dashboard/overview.json"


@pytest.fixture(autouse=True)
def _fresh_limiter():
    limiter.reset_state()
    yield
    limiter.reset_state()


@pytest.fixture
def quota_plan(db):
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    ModelPriceFactory(model=chat, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    return Plan.objects.create(
        slug="live",
        name="Live",
        monthly_request_quota=40,
        monthly_token_quota=100_000,
    )


def _member(plan, role="viewer"):
    membership = MembershipFactory(role=role)
    membership.organization.plan = plan
    membership.organization.save()
    return membership


def _key(membership) -> str:
    return api_key_create(
        organization=membership.organization, name="live", actor=Actor.for_system("t")
    ).raw_key


def test_the_counters_follow_the_calls_and_match_the_overview(quota_plan, client):
    owner = _member(quota_plan)
    client.force_login(owner.user)
    before = client.get(URL)
    assert before.status_code == 200
    assert before["Cache-Control"].startswith("max-age=0")
    assert before.json()["requests"] == {"used": 0, "limit": 40, "percent": 0}

    tokens = _use(_key(owner), 4)
    after = client.get(URL).json()

    assert after["requests"] == {"used": 4, "limit": 40, "percent": 10}
    assert after["tokens"] == {
        "used": tokens,
        "limit": 100_000,
        "percent": round(100 * tokens / 100_000),
    }
    assert Decimal(after["cost"]) > 0
    assert (after["refused"], after["errors"]) == (0, 0)
    page = client.get("/dashboard/").content.decode()
    assert f'<span data-live="cost">{after["cost"]}</span>' in page
    assert '<span data-live="requests.used">4</span>' in page
    assert f'<span data-live="tokens.used">{tokens:,}</span>' in page
    assert '<span data-live="requests.percent">10</span>% used' in page


def test_another_organizations_calls_never_count(quota_plan, client):
    mine, theirs = _member(quota_plan), _member(quota_plan)
    _use(_key(theirs), 3)
    client.force_login(mine.user)
    assert client.get(URL).json()["requests"]["used"] == 0
    client.force_login(theirs.user)
    assert client.get(URL).json()["requests"]["used"] == 3


def test_it_reads_rollups_in_a_few_queries_never_raw_events(quota_plan, client):
    owner = _member(quota_plan)
    _use(_key(owner), 2)
    client.force_login(owner.user)
    client.get(URL)  # warm whatever is cached per process
    with CaptureQueriesContext(connection) as queries:
        assert client.get(URL).status_code == 200
    assert len(queries) <= 6, [q["sql"] for q in queries]
    assert not [q for q in queries if UsageEvent._meta.db_table in q["sql"]]


def test_anonymous_callers_are_sent_to_log_in(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_only_get(quota_plan, client):
    client.force_login(_member(quota_plan).user)
    assert client.post(URL).status_code == 405
