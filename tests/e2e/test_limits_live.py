"""Rate limits and quotas under real concurrency, over HTTP, against real server processes
sharing PostgreSQL and Redis (uvicorn running aibaas.asgi:application, as in production).

- 200 requests from 32 threads on a key limited to 50/min: exactly 50 succeed, 150 are 429s
  with the headers of DESIGN.md; the same across two server processes.
- a monthly quota of 100 hit by 300 concurrent requests admits exactly 100.
- token limits settle to the tokens the responses reported.
- Redis stopped mid-run: the server keeps limiting (per process) and goes back to Redis.
"""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent
from aibaas.gateway.models import AIModel
from billing.models import Plan
from keys.services import api_key_create
from metering.models import QuotaCounter
from tests.factories import AIModelFactory, MembershipFactory
from tests.redis_server import RedisProcess
from tests.servers import server_process

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello there"}]}
SERVER_ENV = {"GATEWAY_IP_RATE": "", "LOG_LEVEL": "WARNING", "METRICS_TOKEN": "operator-e2e"}
OPERATOR = {"Authorization": "Bearer operator-e2e"}  # /readyz's detail is for operators


@pytest.fixture
def chat_model(db):
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)


def _org(**plan_limits):
    plan = Plan.objects.create(slug=f"t{time.monotonic_ns()}", name="test", **plan_limits)
    owner = MembershipFactory()
    owner.organization.plan = plan
    owner.organization.save()
    return owner.organization


def _key(org, **overrides) -> str:
    return api_key_create(
        organization=org, name="load", actor=Actor.for_system("tests"), **overrides
    ).raw_key


def _fire(bases: list[str], key: str, count: int, threads: int = 32, body=BODY) -> list:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.Client(base_url=base, timeout=30) for base in bases]

    def one(i: int):
        response = clients[i % len(clients)].post(
            "/v1/chat/completions", json=body, headers=headers
        )
        return response.status_code, response.headers, response.json()

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()


def _check_refusals(results, limit: int):
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) == limit, [r[0] for r in results if r[0] not in (200, 429)]
    assert len(refused) == len(results) - limit
    for _status, headers, body in refused:
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["type"] == "rate_limit_error"
        assert "50 requests per minute" in body["error"]["message"]
        retry = int(headers["Retry-After"])
        assert 1 <= retry <= 61 and body["error"]["retry_after"] == retry
        assert headers["X-RateLimit-Limit"] == "50"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert headers["x-ratelimit-limit-requests"] == "50"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(headers["X-RateLimit-Reset"]) <= 61
        assert re.fullmatch(r"(\d+m)?\d+s", headers["x-ratelimit-reset-requests"])
    remaining = sorted(int(h["X-RateLimit-Remaining"]) for _, h, _ in ok)
    assert remaining == list(range(limit))  # each admitted request saw its own count


def test_200_requests_from_32_threads_on_a_50_per_minute_key_admit_exactly_50(chat_model):
    key = _key(_org(requests_per_minute=50))
    with server_process(SERVER_ENV) as base:
        _check_refusals(_fire([base], key, 200), 50)


def test_two_server_processes_sharing_redis_admit_exactly_50_together(chat_model):
    key = _key(_org(requests_per_minute=50))
    started = time.time()
    with server_process(SERVER_ENV) as a, server_process(SERVER_ENV) as b:
        _check_refusals(_fire([a, b], key, 200), 50)
        minutes = len({int(started // 60), int(time.time() // 60)})
        # 150 refusals on two processes: one audit event per key and minute, not per process.
        refused = AuditEvent.objects.filter(action=AuditAction.RATE_LIMIT_REFUSED)
        deadline = time.monotonic() + 10
        while not refused.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second process's duplicate, if there were one, would be in by now
        assert 1 <= refused.count() <= minutes


def test_a_monthly_quota_of_100_hit_by_300_concurrent_requests_admits_exactly_100(chat_model):
    org = _org(monthly_request_quota=100)
    key = _key(org)
    with server_process(SERVER_ENV) as a, server_process(SERVER_ENV) as b:
        results = _fire([a, b], key, 300)
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 100, sorted(set(statuses))
    assert statuses.count(429) == 200
    refused = next(r for r in results if r[0] == 429)
    assert refused[2]["error"]["code"] == "insufficient_quota"
    assert int(refused[1]["Retry-After"]) >= 1
    assert QuotaCounter.objects.get(organization=org).requests == 100


def test_token_limits_settle_to_the_tokens_really_used(chat_model):
    key = _key(_org(tokens_per_minute=100_000))
    with server_process(SERVER_ENV) as base:
        results = _fire([base], key, 10, threads=4)
        used = sum(body["usage"]["total_tokens"] for _, _, body in results)
        info = httpx.get(f"{base}/v1/key", headers={"Authorization": f"Bearer {key}"}).json()
    assert info["limits"]["tokens_per_minute"] == 100_000
    assert info["remaining"]["tokens_per_minute"] == 100_000 - used


def test_redis_stopped_mid_run_keeps_limiting_and_recovers(chat_model):
    key = _key(_org(requests_per_minute=5))
    redis_server = RedisProcess()
    redis_server.start()
    try:
        env = {
            **SERVER_ENV,
            "REDIS_URL": redis_server.url,
            "CELERY_BROKER_URL": "",
            "REDIS_RETRY_SECONDS": "0.5",
        }
        with server_process(env) as base:
            first = [r[0] for r in _fire([base], key, 8, threads=1)]
            assert first == [200] * 5 + [429] * 3
            assert (
                httpx.get(f"{base}/readyz", headers=OPERATOR).json()["limiter"]["backend"]
                == "redis"
            )

            redis_server.stop()
            # Still limiting, per process, on a fresh count: 5 more, then 429s.
            during = [r[0] for r in _fire([base], key, 8, threads=1)]
            assert during == [200] * 5 + [429] * 3
            assert (
                httpx.get(f"{base}/readyz", headers=OPERATOR).json()["limiter"]["backend"]
                == "local"
            )

            redis_server.start()
            time.sleep(0.6)
            # Back on Redis (restarted empty): the counts made during the outage are handed
            # over to it, so the window is still full and the next requests are refused.
            after = [r[0] for r in _fire([base], key, 2, threads=1)]
            assert after == [429, 429]
            assert (
                httpx.get(f"{base}/readyz", headers=OPERATOR).json()["limiter"]["backend"]
                == "redis"
            )
    finally:
        redis_server.stop()
