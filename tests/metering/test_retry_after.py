"""Retry-After never says more than the window, and is the real wait: a per-minute limit said
"Retry in 61 s" (a bucket was counted until its end plus the window). Every limit that answers
Retry-After, at the edges of its window and of its buckets, on the in-process limiter and on
Redis, with the clock held by time-machine:

- per-key windows (requests and tokens, per minute and per day, bursts), through /v1 as a client
  sees them (the header and `retry_after` of the body agree);
- the per-IP layer in front of them;
- the login limit of POST /api/auth/token (and the dashboard's login and signup pages).
"""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from accounts.actors import Actor
from billing.models import Plan
from keys.services import api_key_create
from metering import ip_limit, limiter, refusals
from metering.limiter import DAY_MS, MINUTE_MS, Limit
from tests.factories import AIModelFactory, MembershipFactory, UserFactory
from tests.gateway.asgi_client import AsgiTestClient
from tests.metering import limiter_calls as calls

# A whole second: the minute window's 1 s buckets (and the day's 24 min ones) start here.
EPOCH = datetime(2031, 3, 9, 7, 0, 0, tzinfo=UTC)
EDGES_MS = [0, 1, 500, 999]  # where in a 1 s bucket the first admission falls
CHAT = "/v1/chat/completions"
HELLO = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def _fresh_limits():
    limiter.reset_state()
    ip_limit.reset_state()
    refusals.reset_audit_dedup()
    yield
    refusals.flush_audit()
    limiter.reset_state()
    ip_limit.reset_state()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, settings) -> str:
    """In the process (no REDIS_URL), and on the run's Redis."""
    if request.param == "local":
        settings.REDIS_URL = ""
    return request.param


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --- the limiter: every window, every edge ----------------------------------------------------

WINDOWS = [
    Limit("requests_per_minute", "requests", MINUTE_MS, 3),
    Limit("tokens_per_minute", "tokens", MINUTE_MS, 30),
    Limit("requests_per_day", "requests", DAY_MS, 3),
    Limit("burst_requests", "requests", 10_000, 3),
]


@pytest.mark.parametrize("edge", EDGES_MS)
@pytest.mark.parametrize("window", WINDOWS, ids=lambda lim: lim.name)
def test_retry_after_is_the_real_wait_and_never_more_than_the_window(backend, window, edge):
    key_id = f"r{uuid.uuid4().hex[:12]}"
    tokens = 10 if window.kind == "tokens" else 0
    # fill the window: the first admissions at the edge (as a share of the bucket), the last
    # one later in the same bucket
    width = -(-window.window_ms // 60)
    offset = edge * width // 1000
    start = _ms(EPOCH) // width * width + offset
    times = [start, start, start + (width - 1 - offset) // 2]
    assert all(calls.check(key_id, [window], now_ms=t, tokens=tokens).allowed for t in times)
    latest = times[-1]
    for now in (latest, latest + 1, latest + window.window_ms // 2, latest + window.window_ms - 1):
        refused = calls.check(key_id, [window], now_ms=now, tokens=tokens)
        assert not refused.allowed
        assert 0 < refused.retry_after_ms <= window.window_ms
        assert refused.retry_after_ms == latest + window.window_ms - now  # the real wait
        assert refused.windows[0].reset_ms <= window.window_ms
    assert calls.check(key_id, [window], now_ms=latest + window.window_ms, tokens=tokens).allowed
    limiter.reset(key_id)


def test_a_request_that_can_never_fit_is_told_the_window_not_more(backend):
    tokens_per_minute = WINDOWS[1]
    refused = calls.check("never-fits", [tokens_per_minute], now_ms=_ms(EPOCH) + 999, tokens=31)
    assert refused.retry_after_ms == MINUTE_MS


# --- per-key limits through /v1 -------------------------------------------------------------


def _key(**limits) -> str:
    owner = MembershipFactory()
    owner.organization.plan = Plan.objects.create(
        slug=f"p{uuid.uuid4().hex[:8]}", name="retry plan", **limits
    )
    owner.organization.save()
    issued = api_key_create(
        organization=owner.organization, name="retry", actor=Actor.for_system("tests")
    )
    return issued.raw_key


def _chat(client, raw_key: str):
    return client.post(
        CHAT,
        data=json.dumps(HELLO),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
    )


def _retry(response) -> int:
    assert response.status_code == 429, response.content[:300]
    body = response.json()["error"]
    assert body["retry_after"] == int(response["Retry-After"])
    assert f"Retry in {body['retry_after']} s" in body["message"]
    return body["retry_after"]


@pytest.fixture
def client():
    return AsgiTestClient()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("edge", EDGES_MS)
def test_a_per_minute_limit_says_60_s_at_most_and_admits_then(backend, client, edge):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = _key(requests_per_minute=1, monthly_request_quota=1000)
    admitted_at = EPOCH + timedelta(milliseconds=edge)
    with time_machine.travel(admitted_at, tick=False) as clock:
        assert _chat(client, raw).status_code == 200
        assert _retry(_chat(client, raw)) == 60  # was 61: the bucket's end plus the minute
        clock.move_to(admitted_at + timedelta(seconds=30, milliseconds=1))
        assert _retry(_chat(client, raw)) == 30  # 29.999 s, rounded up
        clock.move_to(admitted_at + timedelta(seconds=59, milliseconds=999))
        assert _retry(_chat(client, raw)) == 1
        clock.move_to(admitted_at + timedelta(seconds=60))
        assert _chat(client, raw).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_per_day_limit_says_a_day_at_most(backend, client):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = _key(requests_per_day=1, monthly_request_quota=1000)
    with time_machine.travel(EPOCH + timedelta(milliseconds=999), tick=False) as clock:
        assert _chat(client, raw).status_code == 200
        assert _retry(_chat(client, raw)) == 86_400
        clock.shift(timedelta(days=1))
        assert _chat(client, raw).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_burst_window_says_its_own_length_at_most(backend, client):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = _key(
        requests_per_minute=60, burst_percent=50, burst_seconds=10, monthly_request_quota=1000
    )
    with time_machine.travel(EPOCH + timedelta(milliseconds=999), tick=False):
        assert [_chat(client, raw).status_code for _ in range(15)] == [200] * 15
        assert _retry(_chat(client, raw)) == 10


# --- the per-IP layer -------------------------------------------------------------------------


def _address() -> str:
    """An address of its own (a /64 is counted as one), so reruns on Redis never share one."""
    token = uuid.uuid4().hex
    return f"2001:db8:{token[:4]}:{token[4:8]}::1"


@pytest.mark.parametrize("elapsed_s", [0, 30, 59.999])
def test_the_per_ip_layer_never_says_more_than_its_period(backend, settings, elapsed_s):
    """An address that keeps hammering counts itself further out than the period (refused
    attempts count): it is told the period, and told again."""
    settings.GATEWAY_IP_RATE = "10/m"
    window_start = _ms(EPOCH)
    now = window_start + int(elapsed_s * 1000)
    address = _address()

    async def run() -> list[int]:
        return [await calls.ip_check(address, now_ms=now) for _ in range(30)]

    answers = asyncio.run(run())
    assert answers[:10] == [0] * 10
    assert all(1 <= retry <= 60 for retry in answers[10:])


def test_the_per_ip_layer_says_the_real_wait_when_it_is_shorter(backend, settings):
    """10 requests in the previous minute, 5 more at half past: the 6th is refused, and the
    retry (which counts too) fits when the previous minute's weight has fallen to 3: 12 s."""
    settings.GATEWAY_IP_RATE = "10/m"
    window = _ms(EPOCH)
    half = window + 30_000
    addresses = [_address(), _address()]

    async def run(address: str, probe_ms: int) -> tuple[list[int], int]:
        for _ in range(10):
            assert await calls.ip_check(address, now_ms=window - 60_000) == 0
        answers = [await calls.ip_check(address, now_ms=half) for _ in range(6)]
        return answers, await calls.ip_check(address, now_ms=probe_ms)

    answers, probe = asyncio.run(run(addresses[0], half + 12_000))
    assert answers == [0] * 5 + [12]
    assert probe == 0
    answers, probe = asyncio.run(run(addresses[1], half + 11_999))
    assert answers == [0] * 5 + [12] and probe > 0


# --- login limits -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("rate", "period"), [("2/m", 60), ("2/10s", 10), ("2/h", 3600)])
@pytest.mark.parametrize("edge_ms", [0, 999])
def test_the_token_endpoints_login_limit_says_the_real_wait(settings, rate, period, edge_ms):
    settings.RATELIMIT_LOGIN = rate
    user = UserFactory()
    client = Client(REMOTE_ADDR=_address())  # a limit of its own, whoever else runs
    start = EPOCH + timedelta(milliseconds=edge_ms)

    def attempt():
        return client.post(
            "/api/auth/token",
            {"email": user.email, "password": "wrong"},
            content_type="application/json",
        )

    with time_machine.travel(start, tick=False) as clock:
        assert [attempt().status_code for _ in range(2)] == [401, 401]
        blocked = attempt()
        assert blocked.status_code == 429
        retry = blocked.json()["error"]["retry_after"]
        assert retry == int(blocked["Retry-After"])
        assert 1 <= retry <= period  # was a fixed 60 whatever the period
        clock.move_to(start + timedelta(seconds=retry) - timedelta(milliseconds=edge_ms + 1))
        assert attempt().status_code == 429
        clock.move_to(start + timedelta(seconds=retry) - timedelta(milliseconds=edge_ms))
        assert attempt().status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/"])
def test_the_dashboards_login_and_signup_limits_never_say_more_than_the_period(settings, path):
    settings.RATELIMIT_LOGIN = settings.RATELIMIT_SIGNUP = "1/10s"
    client = Client(REMOTE_ADDR=_address())
    with time_machine.travel(EPOCH + timedelta(milliseconds=999), tick=False):
        client.post(path, {"username": "x@example.com", "email": "x", "password": "nope"})
        blocked = client.post(path, {"username": "x@example.com", "email": "x", "password": "n"})
        assert blocked.status_code == 429
        assert 1 <= int(blocked["Retry-After"]) <= 10
