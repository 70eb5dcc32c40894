"""Rate limits and quotas as a client of /v1 sees them (metering/admission.py behind the
pipeline): headers on every response, 429s in OpenAI's shape, refused requests counting
nowhere, the per-IP layer, audit events of refusals, GET /v1/key's remaining figures.

Requests go through the production ASGI application, in process (tests/gateway/asgi_client.py).
On REDIS_URL the limiter is Redis's, else the in-process one; on PostgreSQL the quota goes
through the batched path.
"""

import json
import uuid

import pytest

from accounts.actors import Actor
from accounts.models import AuditEvent
from billing.models import Plan
from keys import verification
from keys.services import api_key_create
from metering import ip_limit, limiter, refusals
from metering.models import QuotaCounter, UsageEvent
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import AsgiTestClient
from tests.metering import test_quota_batched

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
HELLO = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}]}
REQUEST_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
OPENAI_HEADERS = tuple(
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
)


@pytest.fixture(autouse=True)
def _fresh_limits():
    limiter.reset_state()
    ip_limit.reset_state()
    refusals.reset_audit_dedup()
    yield
    refusals.flush_audit()
    limiter.reset_state()
    ip_limit.reset_state()


@pytest.fixture
def client():
    return AsgiTestClient()


@pytest.fixture(autouse=True)
def chat_model(db):
    return AIModelFactory(name="demo-chat", test_mode_allowed=True)


def plan(**limits) -> Plan:
    return Plan.objects.create(slug=f"p{uuid.uuid4().hex[:8]}", name="test plan", **limits)


def key_for(**limits) -> tuple[str, object]:
    owner = MembershipFactory()
    owner.organization.plan = plan(**limits)
    owner.organization.save()
    issued = api_key_create(
        organization=owner.organization, name="limits", actor=Actor.for_system("tests")
    )
    return issued.raw_key, owner.organization


def chat(client, raw_key: str, body=None, **extra):
    return client.post(
        CHAT,
        data=json.dumps(body or HELLO),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        **extra,
    )


def error(response) -> dict:
    return response.json()["error"]


# --- headers ------------------------------------------------------------------------------------


def test_an_admitted_request_carries_every_rate_limit_header(client):
    raw, _ = key_for(requests_per_minute=5, requests_per_day=100, tokens_per_minute=50_000)
    response = chat(client, raw)
    assert response.status_code == 200
    # The tightest request window is the minute's: 5, of which this request used one.
    assert response["X-RateLimit-Limit"] == "5"
    assert response["X-RateLimit-Remaining"] == "4"
    assert 60 <= int(response["X-RateLimit-Reset"]) <= 61
    assert response["x-ratelimit-limit-requests"] == "5"
    assert response["x-ratelimit-remaining-requests"] == "4"
    assert response["x-ratelimit-reset-requests"] in ("1m0s", "1m1s")
    assert response["x-ratelimit-limit-tokens"] == "50000"
    assert int(response["x-ratelimit-remaining-tokens"]) < 50_000
    assert response["x-ratelimit-reset-tokens"].endswith("s")
    assert "X-Request-ID" in response


def test_a_stream_carries_the_rate_limit_headers_too(client):
    raw, _ = key_for(requests_per_minute=5)
    response = chat(client, raw, dict(HELLO, stream=True))
    assert response.status_code == 200
    assert response["X-RateLimit-Remaining"] == "4"
    assert b"data: [DONE]" in b"".join(getattr(response, "streaming_content", [])) or (
        b"data: [DONE]" in getattr(response, "content", b"")
    )


@pytest.mark.parametrize("path", ["/v1/models", "/v1/key"])
def test_other_v1_endpoints_carry_the_headers_without_counting(client, path):
    raw, _ = key_for(requests_per_minute=5)
    chat(client, raw)
    for _ in range(3):
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "5"
        assert response["X-RateLimit-Remaining"] == "4"  # read, not counted


def test_a_key_without_limits_gets_no_rate_limit_headers(client):
    raw, _ = key_for()
    response = chat(client, raw)
    assert response.status_code == 200
    for name in (*REQUEST_HEADERS, *OPENAI_HEADERS):
        assert name not in response


# --- refusals -----------------------------------------------------------------------------------


def test_the_request_past_the_minute_limit_gets_a_429_that_counts_nowhere(client):
    raw, org = key_for(requests_per_minute=3, monthly_request_quota=1000)
    assert [chat(client, raw).status_code for _ in range(3)] == [200, 200, 200]
    refused = chat(client, raw)
    assert refused.status_code == 429
    body = error(refused)
    assert body["type"] == "rate_limit_error"
    assert body["code"] == "rate_limit_exceeded"
    assert body["param"] is None
    assert "3 requests per minute" in body["message"]
    retry = int(refused["Retry-After"])
    assert 1 <= retry <= 60 and body["retry_after"] == retry
    assert refused["X-RateLimit-Remaining"] == "0"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    # Counted nowhere: the window still holds 3, the quota 3; the usage event says 429.
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert info["remaining"]["requests_per_minute"] == 0
    assert info["remaining"]["monthly_request_quota"] == 997
    statuses = sorted(UsageEvent.objects.filter(organization=org).values_list("status_code"))
    assert statuses == [(200,), (200,), (200,), (429,)]


def test_a_request_larger_than_the_token_limit_is_told_so(client):
    raw, _ = key_for(tokens_per_minute=1_000)
    refused = chat(client, raw, dict(HELLO, max_tokens=5_000))
    assert refused.status_code == 429
    assert "Request too large" in error(refused)["message"]
    assert "1000 tokens per minute" in error(refused)["message"]


def test_the_request_past_the_monthly_quota_gets_insufficient_quota(client):
    raw, org = key_for(requests_per_minute=100, monthly_request_quota=2)
    assert [chat(client, raw).status_code for _ in range(2)] == [200, 200]
    refused = chat(client, raw)
    assert refused.status_code == 429
    body = error(refused)
    assert body["code"] == "insufficient_quota"
    assert "2 of 2 requests used this month" in body["message"]
    assert int(refused["Retry-After"]) == body["retry_after"] >= 1
    # The minute's window gave the refused request back.
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert info["remaining"]["requests_per_minute"] == 98
    assert info["remaining"]["monthly_request_quota"] == 0
    assert QuotaCounter.objects.get(organization=org).requests == 2


def test_refusals_are_audited_once_per_key_and_minute(client):
    raw, org = key_for(requests_per_minute=1)
    chat(client, raw)
    assert [chat(client, raw).status_code for _ in range(3)] == [429, 429, 429]
    refusals.flush_audit()
    events = list(AuditEvent.objects.filter(organization=org, action="rate_limit.refused"))
    assert len(events) == 1
    assert events[0].metadata["code"] == "rate_limit_exceeded"
    assert events[0].metadata["limit"] == "requests_per_minute"
    assert events[0].target_id == raw.split("_")[2]


def test_key_info_shows_each_limit_with_what_remains_and_when_it_resets(client):
    raw, _ = key_for(
        requests_per_minute=10,
        requests_per_day=100,
        tokens_per_day=100_000,
        monthly_request_quota=1_000,
    )
    tokens = [chat(client, raw).json()["usage"]["total_tokens"] for _ in range(2)]
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert info["limits"]["requests_per_minute"] == 10
    assert info["remaining"] == {
        "requests_per_minute": 8,
        "requests_per_day": 98,
        "tokens_per_minute": None,
        "tokens_per_day": 100_000 - sum(tokens),  # settled to what was used
        "monthly_request_quota": 998,
        "monthly_token_quota": None,
    }
    assert 60 <= info["reset_seconds"]["requests_per_minute"] <= 61
    assert info["reset_seconds"]["tokens_per_minute"] is None
    assert info["reset_seconds"]["monthly_request_quota"] > 0


# --- the per-IP layer ---------------------------------------------------------------------------


@pytest.fixture
def per_ip(settings):
    """3 requests a minute per address, the address taken from X-Forwarded-For (our proxy)."""
    settings.GATEWAY_IP_RATE = "3/m"
    settings.CLIENT_IP_PROXIES = ["127.0.0.1/32"]  # the test client is our proxy
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def test_one_address_cycling_through_keys_is_stopped_by_the_per_ip_layer(client, per_ip):
    keys = [key_for(requests_per_minute=100) for _ in range(5)]
    statuses = [chat(client, raw, HTTP_X_FORWARDED_FOR=per_ip).status_code for raw, _ in keys[:4]]
    assert statuses == [200, 200, 200, 429]
    refused = chat(client, keys[4][0], HTTP_X_FORWARDED_FOR=per_ip)
    assert refused.status_code == 429
    assert error(refused)["code"] == "rate_limit_exceeded"
    assert "from your address" in error(refused)["message"]
    assert int(refused["Retry-After"]) >= 1
    assert (refused["X-RateLimit-Limit"], refused["X-RateLimit-Remaining"]) == ("3", "0")
    assert refused["X-RateLimit-Reset"] == refused["Retry-After"]
    assert refused["x-ratelimit-remaining-requests"] == "0"
    # Refused in front of everything: no usage event, nothing counted on the keys.
    raw, org = keys[4]
    assert not UsageEvent.objects.filter(organization=org).exists()
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert info["remaining"]["requests_per_minute"] == 100
    # Another address is not affected.
    other = per_ip.replace("10.", "11.", 1)
    assert chat(client, raw, HTTP_X_FORWARDED_FOR=other).status_code == 200


def test_the_per_ip_refusal_wins_over_a_bad_key(client, per_ip):
    raw, _ = key_for(requests_per_minute=100)
    for _ in range(3):
        chat(client, raw, HTTP_X_FORWARDED_FOR=per_ip)
    response = chat(client, "sk_live_not-a-key", HTTP_X_FORWARDED_FOR=per_ip)
    assert response.status_code == 429


def test_the_per_ip_layer_is_off_when_its_rate_is_empty(client, per_ip, settings):
    raw, _ = key_for(requests_per_minute=100)
    settings.GATEWAY_IP_RATE = ""  # per_ip's 3/m would refuse the 4th
    statuses = [chat(client, raw, HTTP_X_FORWARDED_FOR=per_ip).status_code for _ in range(5)]
    assert statuses == [200] * 5


# --- GET /v1/key with a burst -------------------------------------------------------------------


def test_key_info_with_a_burst_shows_the_enforced_minute_limits_and_the_burst_windows(client):
    raw, _ = key_for(
        requests_per_minute=60, tokens_per_minute=6_000, burst_percent=50, burst_seconds=10
    )
    used = sum(chat(client, raw).json()["usage"]["total_tokens"] for _ in range(2))
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    limits, remaining, reset = info["limits"], info["remaining"], info["reset_seconds"]
    # The limits the limiter enforces (metering/limiter: limits_for): the per-minute limits
    # raised by 50 %, and the 10 s burst windows at that rate pro rata, ceil(90 x 10 / 60).
    assert (limits["requests_per_minute"], limits["tokens_per_minute"]) == (90, 9_000)
    assert (limits["burst_requests"], limits["burst_tokens"]) == (15, 1_500)
    assert (limits["burst_percent"], limits["burst_seconds"]) == (50, 10)
    # Each remaining counts against the limit shown beside it.
    assert (remaining["requests_per_minute"], remaining["burst_requests"]) == (88, 13)
    assert remaining["tokens_per_minute"] == 9_000 - used
    assert remaining["burst_tokens"] == 1_500 - used
    assert 60 <= reset["requests_per_minute"] <= 61
    assert 10 <= reset["burst_requests"] <= 11 and 10 <= reset["burst_tokens"] <= 11


def test_key_info_without_a_burst_shows_no_burst_window(client):
    raw, _ = key_for(requests_per_minute=60, tokens_per_minute=6_000)
    info = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert (info["limits"]["requests_per_minute"], info["limits"]["burst_percent"]) == (60, 0)
    for section in ("limits", "remaining", "reset_seconds"):
        assert not {"burst_requests", "burst_tokens"} & set(info[section])


# --- the quota's database unreachable ----------------------------------------------------------

# The quota's own connections (metering/quota/batched.py) go to a port where no server listens;
# Django's, open already, keep working.
quota_database_down = test_quota_batched.unreachable_database


@pytest.fixture
def quota_key():
    """A key of an organization with a monthly quota, made and verified (so warm in this
    process: no SQL to authenticate it) while the database is reachable."""
    raw, org = key_for(requests_per_minute=100, monthly_request_quota=1_000)
    verification.authenticate_key(raw)
    return raw, org


@pytest.mark.postgres
def test_an_unreachable_quota_database_gets_503_quota_unavailable(
    client, quota_key, quota_database_down
):
    raw, org = quota_key
    refused = chat(client, raw)
    assert refused.status_code == 503
    body = error(refused)
    assert body["code"] == "quota_unavailable"
    assert int(refused["Retry-After"]) >= 1
    assert not QuotaCounter.objects.filter(organization=org).exists()


@pytest.mark.postgres
def test_the_503_quota_unavailable_body_says_retry_after_as_its_header_does(
    client, quota_key, quota_database_down
):
    raw, _ = quota_key
    refused = chat(client, raw)
    assert refused.status_code == 503
    assert error(refused)["retry_after"] == int(refused["Retry-After"]) >= 1


@pytest.mark.postgres
def test_an_unreachable_quota_database_admits_unmetered_when_quota_fail_open(
    client, quota_key, quota_database_down, settings
):
    settings.QUOTA_FAIL_OPEN = True
    raw, org = quota_key
    assert chat(client, raw).status_code == 200
    assert not QuotaCounter.objects.filter(organization=org).exists()
