"""One definition of "requests": billable (admitted) requests, in GET /v1/usage (totals, last
24 h, per key, per model), usage_report, the dashboard and the quota counter; refusals are
counted apart, by code (issue 10, item 5). Through the production ASGI path."""

import io
import json
import re

import pytest
from django.core.management import call_command

from accounts.actors import Actor
from billing.models import Plan
from keys.services import api_key_create
from metering import limiter, refusals
from metering.models import QuotaCounter, UsageEvent
from metering.quota import quota_usage
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
HELLO = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def _fresh_limits():
    limiter.reset_state()
    refusals.reset_audit_dedup()
    yield
    refusals.flush_audit()
    limiter.reset_state()


@pytest.fixture
def owner(db):
    model = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    ModelPriceFactory(model=model)
    plan = Plan.objects.create(
        slug="quota100",
        name="Quota 100",
        requests_per_minute=None,
        requests_per_day=None,
        monthly_request_quota=100,
        monthly_token_quota=None,
    )
    membership = MembershipFactory()
    membership.organization.plan = plan
    membership.organization.save()
    return membership


def _key(organization, scopes=("inference", "usage:read")):
    return api_key_create(
        organization=organization, name="k", scopes=list(scopes), actor=Actor.for_system("t")
    )


def _post(client, raw: str, body: dict):
    return client.post(
        CHAT, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
    )


def test_100_admitted_and_250_refused_are_100_requests_everywhere(owner, client):
    organization = owner.organization
    raw = _key(organization).raw_key
    v1 = AsgiTestClient()
    statuses = [_post(v1, raw, HELLO).status_code for _ in range(350)]
    assert statuses == [200] * 100 + [429] * 250
    # A model that does not exist: refused (404), never a model row.
    assert _post(v1, raw, dict(HELLO, model="no-such-model")).status_code == 404

    events = UsageEvent.objects.filter(organization=organization)
    admitted = events.filter(billable=True)
    tokens_in = sum(admitted.values_list("input_tokens", flat=True))
    tokens_out = sum(admitted.values_list("output_tokens", flat=True))
    cost = sum(admitted.values_list("cost", flat=True))
    assert tokens_in > 0 and tokens_out > 0 and cost > 0
    assert set(events.filter(billable=False).values_list("error_code", flat=True)) == {
        "insufficient_quota",
        "model_not_found",
    }

    usage = v1.get("/v1/usage", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    for section in (usage["totals"], usage["last_24h"]):
        assert section["requests"] == 100
        assert section["refused"] == 251
        assert section["errors"] == 0
        assert (section["input_tokens"], section["output_tokens"]) == (tokens_in, tokens_out)
        assert section["cost"] == f"{cost:.8f}"
    assert usage["refused_by_code"] == {"insufficient_quota": 250, "model_not_found": 1}
    [by_key] = usage["by_key"]
    assert (by_key["requests"], by_key["refused"]) == (100, 251)
    assert [(row["model"], row["requests"]) for row in usage["by_model"]] == [("demo-chat", 100)]

    # The quota counts the same requests.
    assert quota_usage(organization.pk)[1] == 100
    assert QuotaCounter.objects.get(organization=organization).requests == 100

    out = io.StringIO()
    call_command("usage_report", "--org", organization.slug, stdout=out)
    report = json.loads(out.getvalue())
    assert report["totals"] == usage["totals"]
    assert report["refused_by_code"] == usage["refused_by_code"]

    client.force_login(owner.user)
    page = client.get("/dashboard/").content.decode()
    card = page[page.index('data-testid="quota"') :]
    assert re.search(r">100</span>\s*<span class=\"muted nowrap\">/ 100</span>", card)
    refused = card[card.index('data-testid="refused"') :]
    assert re.search(r'class="value" data-live="refused">251<', refused)

    # The quota counter and the events agree, tokens included (settled by usage_record).
    out = io.StringIO()
    call_command("reconcile_usage", "--org", organization.slug, stdout=out)
    assert out.getvalue().rstrip().endswith("0 difference(s)")


def test_an_admitted_request_that_fails_upstream_is_a_billable_error(owner):
    """A request admitted then failed (here: the client hung up, 499) counts as a request and
    as an error, and its event says why."""
    from metering.services import usage_record
    from tests.metering.conftest import make_event

    issued = _key(owner.organization)
    usage_record(
        events=[
            make_event(issued),
            make_event(issued, status_code=502, error_code="upstream_error", input_tokens=0),
            make_event(issued, status_code=429, error_code="rate_limit_exceeded", billable=False),
        ]
    )
    from metering.selectors import usage_summary

    summary = usage_summary(organization=owner.organization)
    assert (summary["totals"]["requests"], summary["totals"]["errors"]) == (2, 1)
    assert summary["totals"]["refused"] == 1
    assert summary["refused_by_code"] == {"rate_limit_exceeded": 1}
    assert summary["by_model"][0]["errors"] == 1
