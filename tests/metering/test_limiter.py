"""The sliding-window rate limiter (metering/limiter/), on both backends: in the process (no
REDIS_URL) and on Redis (the server of REDIS_URL, or a private redis-server for round trips and
outages). Time is shifted through `now_ms`; every test has its own key id.
"""

import asyncio
import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import redis

from billing.models import Plan
from keys import verification
from metering import limiter
from metering.limiter import Limit, limits_for
from tests.metering import limiter_calls as calls
from tests.redis_server import redis_process, redis_server_available
from tests.servers import free_port

T0 = 1_700_000_000_000  # a whole second: the minute window's buckets start at T0
MINUTE, DAY = 60_000, 86_400_000


def rpm(limit: int) -> Limit:
    return Limit("requests_per_minute", "requests", MINUTE, limit)


def tpm(limit: int) -> Limit:
    return Limit("tokens_per_minute", "tokens", MINUTE, limit)


def rpd(limit: int) -> Limit:
    return Limit("requests_per_day", "requests", DAY, limit)


@pytest.fixture(autouse=True)
def _fresh_limiter():
    limiter.reset_state()
    yield
    limiter.reset_state()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, settings) -> str:
    """Each test twice: in the process (no REDIS_URL) and on the run's Redis."""
    if request.param == "local":
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def key_id(settings):
    key_id = f"t{uuid.uuid4().hex[:16]}"
    yield key_id
    if settings.REDIS_URL:
        limiter.reset(key_id)


def allowed(key_id, limits, times, **kwargs) -> list[bool]:
    return [calls.check(key_id, limits, now_ms=t, **kwargs).allowed for t in times]


def reference_allows(admitted: list[tuple[int, int]], now: int, limits, amounts) -> bool:
    """The rule, written plainly: a window counts every admission of a bucket (W/60 wide) whose
    latest admission is less than W old. `admitted` holds (at_ms, index in `amounts`)."""
    for lim in limits:
        width = -(-lim.window_ms // 60)
        latest: dict[int, int] = {}
        for at, _ in admitted:
            latest[at // width] = max(latest.get(at // width, at), at)
        used = sum(
            amounts[i][lim.kind] for at, i in admitted if latest[at // width] > now - lim.window_ms
        )
        if used + amounts[-1][lim.kind] > lim.limit:
            return False
    return True


# --- exactness ------------------------------------------------------------------------------


def test_50_per_minute_admits_exactly_50_of_200_calls(backend, key_id):
    decisions = [calls.check(key_id, [rpm(50)], now_ms=T0 + i * 10) for i in range(200)]
    assert [d.allowed for d in decisions] == [True] * 50 + [False] * 150
    assert [d.windows[0].used for d in decisions[:50]] == list(range(1, 51))
    assert [d.windows[0].remaining for d in decisions[:50]] == list(range(49, -1, -1))
    assert {d.backend for d in decisions} == {backend}
    refused = decisions[50]
    assert refused.refused_by == rpm(50)
    assert refused.windows[0].used == 50 and refused.windows[0].remaining == 0


def test_refused_calls_count_nowhere(backend, key_id):
    limits = [rpm(5), rpd(100), tpm(1_000)]
    assert allowed(key_id, limits, [T0] * 25, tokens=10) == [True] * 5 + [False] * 20
    # refused by the token window: the request windows do not count it either
    assert not calls.check(key_id, limits, now_ms=T0 + 61_000, tokens=1_001).allowed
    assert [w.used for w in limiter.peek(key_id, limits, now_ms=T0 + 61_000)] == [0, 5, 0]
    assert allowed(key_id, limits, [T0 + 61_000] * 6) == [True] * 5 + [False]
    assert [w.used for w in limiter.peek(key_id, limits, now_ms=T0 + 61_000)] == [5, 10, 0]


def test_no_60_second_span_ever_holds_more_than_the_limit(backend, key_id):
    """A long run at random times, faster than the limit, across several minutes: every call is
    decided as the plain rule says, and no 60 s span of admissions holds more than 20."""
    rng = random.Random(20250615)
    limits = [rpm(20)]
    times = sorted(T0 + rng.randrange(0, 5 * MINUTE) for _ in range(1_500))
    admitted: list[tuple[int, int]] = []
    amounts = [{"requests": 1}]
    for now in times:
        expected = reference_allows(admitted, now, limits, amounts)
        assert calls.check(key_id, limits, now_ms=now).allowed is expected, now - T0
        if expected:
            admitted.append((now, 0))
    stamps = [at for at, _ in admitted]
    for i, start in enumerate(stamps):
        assert sum(1 for at in stamps[i:] if at < start + MINUTE) <= 20
    # and the capacity is used: 20 a minute, freed at most one bucket (1 s) late
    assert len(stamps) >= 20 * 5 * MINUTE // (MINUTE + 1_000)


@pytest.mark.parametrize("offset", [0, 1, 500, 999])
def test_capacity_frees_a_window_after_the_buckets_latest_admission(backend, key_id, offset):
    first = T0 + offset // 2
    at = T0 + offset
    assert allowed(key_id, [rpm(3)], [first, at, at, at]) == [True, True, True, False]
    refused = calls.check(key_id, [rpm(3)], now_ms=at)
    assert refused.retry_after_ms == MINUTE  # never more than the window
    assert not calls.check(key_id, [rpm(3)], now_ms=at + MINUTE - 1).allowed
    assert calls.check(key_id, [rpm(3)], now_ms=at + MINUTE).allowed


def test_a_day_window_frees_a_day_after_the_buckets_latest_admission(backend, key_id):
    at = T0 + 5_000
    assert allowed(key_id, [rpd(2)], [T0, at, at]) == [True, True, False]
    free = calls.check(key_id, [rpd(2)], now_ms=at + 1)
    assert free.retry_after_ms == DAY - 1
    assert not calls.check(key_id, [rpd(2)], now_ms=at + DAY - 1).allowed
    assert calls.check(key_id, [rpd(2)], now_ms=at + DAY).allowed


def test_retry_after_is_when_enough_old_buckets_age_out(backend, key_id):
    limits = [rpm(5)]
    assert allowed(key_id, limits, [T0 + s * 10_000 for s in range(5)]) == [True] * 5
    now = T0 + 45_000
    refused = calls.check(key_id, limits, now_ms=now)
    assert not refused.allowed
    assert refused.retry_after_ms == 15_000  # the T0 admission leaves at T0 + 60 s
    assert refused.windows[0].reset_ms == 15_000
    assert refused.at_ms == now
    assert not calls.check(key_id, limits, now_ms=now + refused.retry_after_ms - 1).allowed
    assert calls.check(key_id, limits, now_ms=now + refused.retry_after_ms).allowed


@pytest.mark.parametrize(
    ("tokens", "retry_ms"),
    [(50, 40_000), (70, 50_000), (100, 50_000)],  # one bucket must go; two must go
)
def test_retry_after_for_tokens_walks_the_oldest_buckets(backend, key_id, tokens, retry_ms):
    limits = [tpm(100)]
    assert allowed(key_id, limits, [T0, T0 + 10_000], tokens=40) == [True, True]
    now = T0 + 20_000
    refused = calls.check(key_id, limits, now_ms=now, tokens=tokens)
    assert (refused.allowed, refused.retry_after_ms) == (False, retry_ms)
    assert not calls.check(key_id, limits, now_ms=now + retry_ms - 1, tokens=tokens).allowed
    assert calls.check(key_id, limits, now_ms=now + retry_ms, tokens=tokens).allowed


def test_the_refusing_window_that_frees_last_names_the_refusal(backend, key_id):
    limits = [rpm(2), rpd(4)]
    assert allowed(key_id, limits, [T0, T0, T0 + 70_000, T0 + 70_000]) == [True] * 4
    refused = calls.check(key_id, limits, now_ms=T0 + 70_001)  # both refuse
    assert refused.refused_by == rpd(4)
    assert refused.retry_after_ms == DAY - 1  # the day bucket's latest admission: T0 + 70 s


def test_a_request_larger_than_a_token_limit_never_fits(backend, key_id):
    decision = calls.check(key_id, [rpm(10), tpm(100)], now_ms=T0, tokens=101)
    assert not decision.allowed
    assert decision.refused_by == tpm(100)
    assert decision.retry_after_ms >= 1
    assert [w.used for w in decision.windows] == [0, 0]
    assert calls.check(key_id, [rpm(10), tpm(100)], now_ms=T0, tokens=100).allowed


# --- settlement -----------------------------------------------------------------------------


def test_an_estimate_settled_with_the_actual_tokens_leaves_the_actual_count(backend, key_id):
    limits = [rpm(100), tpm(10_000)]
    actual = [120, 300, 0, 450, 299]
    for i, tokens in enumerate(actual):
        decision = calls.check(key_id, limits, now_ms=T0 + i * 7_000, tokens=300)
        assert decision.allowed
        calls.settle(
            key_id,
            limits,
            admitted_at_ms=decision.at_ms,
            token_delta=tokens - 300,
            now_ms=T0 + i * 7_000 + 2_500,
        )
    windows = limiter.peek(key_id, limits, now_ms=T0 + 40_000)
    assert [w.used for w in windows] == [5, sum(actual)]
    assert windows[1].remaining == 10_000 - sum(actual)


def test_settling_after_the_bucket_aged_out_does_nothing(backend, key_id):
    limits = [tpm(1_000)]
    assert allowed(key_id, limits, [T0, T0 + 30_000], tokens=300) == [True, True]
    # until T0 + 60 s the admission's bucket is live: the settlement applies
    calls.settle(key_id, limits, admitted_at_ms=T0, token_delta=-100, now_ms=T0 + 59_999)
    assert limiter.peek(key_id, limits, now_ms=T0 + 59_999)[0].used == 500
    for delta in (-200, 500):
        calls.settle(key_id, limits, admitted_at_ms=T0, token_delta=delta, now_ms=T0 + 60_000)
    assert limiter.peek(key_id, limits, now_ms=T0 + 60_000)[0].used == 300


def test_settling_never_takes_a_bucket_below_zero(backend, key_id):
    limits = [tpm(1_000)]
    assert allowed(key_id, limits, [T0, T0 + 5_000], tokens=300) == [True, True]
    calls.settle(key_id, limits, admitted_at_ms=T0, token_delta=-10_000, now_ms=T0 + 6_000)
    window = limiter.peek(key_id, limits, now_ms=T0 + 6_000)[0]
    assert (window.used, window.reset_ms) == (300, MINUTE - 1_000)  # the T0 bucket is gone


def test_releasing_a_request_restores_its_windows(backend, key_id):
    limits = [rpm(1), tpm(500)]
    first = calls.check(key_id, limits, now_ms=T0, tokens=200)
    assert first.allowed
    assert not calls.check(key_id, limits, now_ms=T0 + 1, tokens=200).allowed
    calls.settle(
        key_id,
        limits,
        admitted_at_ms=first.at_ms,
        request_delta=-1,
        token_delta=-200,
        now_ms=T0 + 2,
    )
    assert [(w.used, w.reset_ms) for w in limiter.peek(key_id, limits, now_ms=T0 + 2)] == [
        (0, 0),
        (0, 0),
    ]
    assert calls.check(key_id, limits, now_ms=T0 + 3, tokens=200).allowed


def test_async_calls_share_the_sync_windows(backend, key_id):
    limits = [rpm(3), tpm(100)]

    async def run():
        first = await calls.acheck(key_id, limits, now_ms=T0, tokens=50)
        await limiter.asettle(
            key_id, limits, admitted_at_ms=first.at_ms, token_delta=-20, now_ms=T0 + 1
        )
        results = [await calls.acheck(key_id, limits, now_ms=T0 + 1) for _ in range(3)]
        return first, results, await calls.apeek(key_id, limits, now_ms=T0 + 2)

    first, results, windows = asyncio.run(run())
    assert first.allowed and first.backend == backend
    assert [d.allowed for d in results] == [True, True, False]
    assert [w.used for w in windows] == [3, 30]
    assert [w.used for w in limiter.peek(key_id, limits, now_ms=T0 + 2)] == [3, 30]


@pytest.mark.redis
def test_an_async_settlement_rides_with_the_next_call_or_goes_by_itself_soon(key_id):
    from infra.redis_clients import redis_client

    limits = [tpm(10_000)]
    tokens_key = f"rl:{{{key_id}}}:tpm"

    async def run():
        now = int(time.time() * 1000)
        first = await calls.acheck(key_id, limits, tokens=300, now_ms=now)
        await limiter.asettle(key_id, limits, admitted_at_ms=first.at_ms, token_delta=-200)
        pending = int(redis_client().hget(tokens_key, "t"))  # not sent yet
        second = await calls.acheck(key_id, limits, tokens=50, now_ms=now + 1)
        # The settlement went with the second check, before it was counted.
        await limiter.asettle(key_id, limits, admitted_at_ms=second.at_ms, token_delta=-20)
        await asyncio.sleep(
            limiter.settlements.SETTLE_DELAY_SECONDS + 0.2
        )  # no call comes: sent alone
        return pending, second.windows[0].used, int(redis_client().hget(tokens_key, "t"))

    pending, after_second, after_timer = asyncio.run(run())
    assert (pending, after_second, after_timer) == (300, 150, 130)


@pytest.mark.redis
def test_a_pending_settlement_waits_out_a_redis_outage(settings, key_id, caplog):
    """Redis unreachable when the settlement is due (REDIS_URL pointed at a closed port, the
    windows stay where they are): it is kept, and sent once Redis answers again."""
    caplog.set_level(logging.CRITICAL, logger="metering.limiter")
    settings.REDIS_RETRY_SECONDS = 0.1
    limits = [tpm(10_000)]
    good_url = settings.REDIS_URL

    async def run():
        decision = await calls.acheck(key_id, limits, tokens=300)
        await limiter.asettle(key_id, limits, admitted_at_ms=decision.at_ms, token_delta=-250)
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
        await asyncio.sleep(limiter.settlements.SETTLE_DELAY_SECONDS + 0.2)  # its own call fails
        still_pending = key_id in limiter.pending.keys
        settings.REDIS_URL = good_url
        await asyncio.sleep(0.2)  # the breaker's retry interval
        return still_pending, await calls.apeek(key_id, limits)

    still_pending, windows = asyncio.run(run())
    assert still_pending
    assert key_id not in limiter.pending.keys
    assert [w.used for w in windows] == [50]


# --- bursts ---------------------------------------------------------------------------------


BURST = {"requests_per_minute": 60, "burst_percent": 50, "burst_seconds": 10}


def test_burst_raises_the_minute_limit_but_caps_any_burst_window(backend, key_id):
    limits = limits_for(BURST)
    assert limits == [
        Limit("requests_per_minute", "requests", MINUTE, 90),
        Limit("burst_requests", "requests", 10_000, 15),
    ]
    # the whole minute's allowance cannot go in one instant
    dump = [calls.check(key_id, limits, now_ms=T0) for _ in range(40)]
    assert sum(d.allowed for d in dump) == 15
    assert dump[15].refused_by.name == "burst_requests"
    # flat out for two minutes: the plain rule decides each call, and the key runs above its
    # 60/min but never past 90 in a minute or 15 in 10 s
    admitted: list[tuple[int, int]] = [(T0, 0)] * 15
    amounts = [{"requests": 1}]
    for now in range(T0 + 100, T0 + 2 * MINUTE, 100):
        expected = reference_allows(admitted, now, limits, amounts)
        assert calls.check(key_id, limits, now_ms=now).allowed is expected
        if expected:
            admitted.append((now, 0))
    stamps = [at for at, _ in admitted]
    for i, start in enumerate(stamps):
        assert sum(1 for at in stamps[i:] if at < start + MINUTE) <= 90
        assert sum(1 for at in stamps[i:] if at < start + 10_000) <= 15
    assert sum(1 for at in stamps if at < T0 + MINUTE) > 60


def test_burst_applies_to_tokens_per_minute_too(backend, key_id):
    limits = limits_for({"tokens_per_minute": 600, "burst_percent": 100, "burst_seconds": 6})
    assert limits == [
        Limit("tokens_per_minute", "tokens", MINUTE, 1_200),
        Limit("burst_tokens", "tokens", 6_000, 120),
    ]
    assert calls.check(key_id, limits, now_ms=T0, tokens=100).allowed
    refused = calls.check(key_id, limits, now_ms=T0, tokens=30)
    assert refused.refused_by.name == "burst_tokens"
    assert calls.check(key_id, limits, now_ms=T0 + refused.retry_after_ms, tokens=30).allowed


def test_a_changed_window_length_starts_that_window_afresh(backend, key_id):
    ten = Limit("burst_requests", "requests", 10_000, 2)
    twenty = Limit("burst_requests", "requests", 20_000, 2)
    assert allowed(key_id, [ten], [T0, T0, T0]) == [True, True, False]
    assert allowed(key_id, [twenty], [T0 + 1, T0 + 1, T0 + 1]) == [True, True, False]


# --- limits_for, peek, reset ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, []),
        (dict.fromkeys(("requests_per_minute", "requests_per_day", "tokens_per_day")), []),
        (
            {"requests_per_minute": 10, "requests_per_day": None, "tokens_per_day": 10_000},
            [rpm(10), Limit("tokens_per_day", "tokens", DAY, 10_000)],
        ),
        (
            {
                "requests_per_minute": 1,
                "requests_per_day": 2,
                "tokens_per_minute": 3,
                "tokens_per_day": 4,
                "monthly_request_quota": 5,
                "burst_percent": 0,
                "burst_seconds": 10,
            },
            [rpm(1), rpd(2), tpm(3), Limit("tokens_per_day", "tokens", DAY, 4)],
        ),
        ({"requests_per_minute": 60, "burst_percent": 50, "burst_seconds": 60}, [rpm(90)]),
        ({"requests_per_minute": 0}, [rpm(0)]),
    ],
    ids=["empty", "all-unlimited", "some-unlimited", "burst-off", "burst-60s-adds-nothing", "0"],
)
def test_limits_for_a_limits_dict(limits, expected):
    assert limits_for(limits) == expected


@pytest.mark.django_db
def test_limits_for_a_key_context_takes_the_plan_with_the_keys_overrides(org, make_key):
    org.plan = Plan.objects.create(
        slug="burst-test",
        name="Burst test",
        requests_per_minute=10,
        requests_per_day=None,
        tokens_per_minute=1_000,
        tokens_per_day=5_000,
        burst_percent=50,
        burst_seconds=6,
    )
    org.save()
    issued = make_key(org, requests_per_minute=8)  # overrides only tighten the plan
    context = verification.authenticate_key(issued.raw_key)
    assert context.limits["burst_percent"] == 50 and context.limits["burst_seconds"] == 6
    assert limits_for(context.limits) == [
        rpm(12),
        tpm(1_500),
        Limit("tokens_per_day", "tokens", DAY, 5_000),
        Limit("burst_requests", "requests", 6_000, 2),
        Limit("burst_tokens", "tokens", 6_000, 150),
    ]


@pytest.mark.django_db
def test_the_seeded_plans_have_bursts_off(org, make_key):
    context = verification.authenticate_key(make_key(org).raw_key)
    assert context.limits["burst_percent"] == 0
    assert {lim.name for lim in limits_for(context.limits)} == {
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
    }


def test_peek_counts_nothing(backend, key_id):
    limits = [rpm(5), tpm(100)]
    empty = limiter.peek(key_id, limits, now_ms=T0)
    assert [(w.used, w.remaining, w.reset_ms) for w in empty] == [(0, 5, 0), (0, 100, 0)]
    assert allowed(key_id, limits, [T0 + 500, T0 + 1_500], tokens=10) == [True, True]
    for _ in range(3):
        windows = limiter.peek(key_id, limits, now_ms=T0 + 2_000)
        assert [(w.used, w.remaining, w.reset_ms) for w in windows] == [
            (2, 3, 58_500),
            (20, 80, 58_500),
        ]
    assert limiter.peek(key_id, [], now_ms=T0) == []


def test_reset_forgets_the_keys_windows(backend, key_id):
    limits = limits_for({"tokens_per_day": 100, **BURST})
    assert allowed(key_id, limits, [T0] * 16) == [True] * 15 + [False]
    limiter.reset(key_id)
    assert [w.used for w in limiter.peek(key_id, limits, now_ms=T0)] == [0, 0, 0]
    assert calls.check(key_id, limits, now_ms=T0).allowed


def test_no_limits_admit_without_any_io(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    key_id = "unlimited"
    decision = calls.check(key_id, [], now_ms=T0)
    assert (decision.allowed, decision.windows, decision.at_ms) == (True, [], T0)
    assert asyncio.run(calls.acheck(key_id, [])).allowed
    calls.settle(key_id, [rpm(5)], admitted_at_ms=T0)  # nothing to settle
    assert limiter.backend_status() == {
        "backend": "redis",
        "redis_down_since": None,
        "fallbacks": 0,
    }


def test_the_local_backend_drops_idle_keys_and_stays_bounded(settings, monkeypatch):
    settings.REDIS_URL = ""
    calls.check("idle", [rpm(5)], now_ms=T0)
    calls.check("busy", [rpm(5)], now_ms=T0 + MINUTE + 1_000)
    assert set(limiter.store.keys) == {"busy"}
    monkeypatch.setattr(limiter.local, "LOCAL_MAX_KEYS", 10)
    for i in range(50):
        calls.check(f"k{i}", [rpm(5)], now_ms=T0 + 2 * MINUTE)
    assert len(limiter.store.keys) == 10
    assert limiter.backend_status() == {
        "backend": "local",
        "redis_down_since": None,
        "fallbacks": 0,
    }


# --- Redis: same answers, concurrency, round trips, outages ---------------------------------


@pytest.mark.redis
@pytest.mark.parametrize(
    ("plan", "max_tokens"),
    [
        # every per-minute and per-day window refuses some calls
        (
            {
                "requests_per_minute": 10,
                "requests_per_day": 60,
                "tokens_per_minute": 1_000,
                "tokens_per_day": 5_000,
            },
            200,
        ),
        # the burst windows and the per-day windows refuse
        (
            {
                "requests_per_minute": 30,
                "requests_per_day": 40,
                "tokens_per_minute": 3_000,
                "tokens_per_day": 4_000,
                "burst_percent": 20,
                "burst_seconds": 5,
            },
            150,
        ),
    ],
    ids=["minute-and-day", "burst"],
)
def test_the_local_backend_answers_exactly_as_redis(settings, key_id, plan, max_tokens):
    """Random checks, settlements and peeks, with time jumping from 0 ms to days: the local
    backend and the script agree on every field."""
    rng = random.Random(42)
    url = settings.REDIS_URL
    limits = limits_for(plan)
    steps = [0, 1, 37, 166, 167, 999, 1_000, 5_000, 61_000, 3_600_000, 90_000_000]
    weights = [20, 10, 10, 5, 5, 10, 10, 10, 4, 2, 1]

    def both(call, **kwargs):
        settings.REDIS_URL = ""
        local = call(key_id, limits, **kwargs)
        settings.REDIS_URL = url
        return local, call(key_id, limits, **kwargs)

    now, admissions = T0, []
    for _ in range(1_500):
        now += rng.choices(steps, weights)[0]
        roll = rng.random()
        if roll < 0.7:
            local, shared = both(calls.check, now_ms=now, tokens=rng.randrange(max_tokens))
            assert (local.backend, shared.backend) == ("local", "redis")
            shared.backend = "local"
            assert local == shared
            if local.allowed:
                admissions.append(local.at_ms)
        elif roll < 0.9 and admissions:
            both(
                calls.settle,
                admitted_at_ms=rng.choice(admissions[-50:]),
                token_delta=rng.randrange(-400, 400),
                request_delta=rng.choice([0, 0, 0, -1, 1]),
                now_ms=now,
            )
        else:
            local, shared = both(limiter.peek, now_ms=now)
            assert local == shared


@pytest.mark.redis
def test_32_threads_making_200_calls_on_a_50_per_minute_key_admit_exactly_50(key_id):
    with ThreadPoolExecutor(32) as pool:
        decisions = list(pool.map(lambda _: calls.check(key_id, [rpm(50)]), range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert {d.backend for d in decisions} == {"redis"}
    assert sorted(d.windows[0].used for d in decisions if d.allowed) == list(range(1, 51))


@pytest.mark.redis
def test_200_concurrent_asyncio_calls_on_a_50_per_minute_key_admit_exactly_50(key_id):
    async def run():
        return await asyncio.gather(*(calls.acheck(key_id, [rpm(50)]) for _ in range(200)))

    decisions = asyncio.run(run())
    assert sum(d.allowed for d in decisions) == 50
    assert {d.backend for d in decisions} == {"redis"}


def test_the_local_backend_is_exact_under_threads(settings, key_id):
    settings.REDIS_URL = ""
    with ThreadPoolExecutor(32) as pool:
        decisions = list(pool.map(lambda _: calls.check(key_id, [rpm(50)]), range(200)))
    assert sum(d.allowed for d in decisions) == 50


needs_redis_server = pytest.mark.skipif(
    not redis_server_available(), reason="needs the redis-server binary"
)


@contextmanager
def commands_sent(port: int):
    """The commands clients send to the server meanwhile, as MONITOR shows them (the commands a
    script runs inside Redis are left out: they are no round trip)."""
    seen: list[str] = []
    client, ender = redis.Redis(port=port), redis.Redis(port=port)
    ender.ping()  # connected before the watch starts
    ready = threading.Event()

    def watch():
        with client.monitor() as monitor:
            ready.set()
            while True:
                command = monitor.next_command()
                if command["command"] == "ECHO end-of-test":
                    return
                if command["client_type"] != "lua":
                    seen.append(command["command"].split(" ")[0].upper())

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(5)
    try:
        yield seen
    finally:
        ender.echo("end-of-test")
        watcher.join(5)
        client.close()
        ender.close()


@pytest.mark.redis
@needs_redis_server
def test_each_call_is_one_evalsha_and_the_script_reloads_itself(settings):
    limits = limits_for(
        {
            "requests_per_minute": 10**6,
            "requests_per_day": 10**6,
            "tokens_per_minute": 10**9,
            "tokens_per_day": 10**9,
            "burst_percent": 10,
        }
    )
    with redis_process() as server:
        settings.REDIS_URL = server.url

        async def async_calls(n: int):
            await calls.acheck("rt", limits, tokens=10)  # the loop's connection is open
            with commands_sent(server.port) as seen:
                for _ in range(n):
                    decision = await calls.acheck("rt", limits, tokens=10)
                    await limiter.asettle(
                        "rt", limits, admitted_at_ms=decision.at_ms, token_delta=5
                    )
                    await calls.apeek("rt", limits)
            return seen

        first = calls.check("rt", limits, tokens=10)  # NOSCRIPT, SCRIPT LOAD, EVALSHA
        assert first.allowed and first.backend == "redis"
        limiter.peek("rt", limits)  # the sync client's connection is open too
        with commands_sent(server.port) as seen:
            for _ in range(50):
                decision = calls.check("rt", limits, tokens=10)
            calls.settle("rt", limits, admitted_at_ms=decision.at_ms, token_delta=-5)
            limiter.peek("rt", limits)
        assert seen == ["EVALSHA"] * 52

        # On the asyncio path a settlement is no command of its own: it goes with the key's
        # next call (here the peek), so 20 x (check, settle, peek) is 40 EVALSHAs.
        assert asyncio.run(async_calls(20)) == ["EVALSHA"] * 40

        redis.Redis(port=server.port).script_flush()
        with commands_sent(server.port) as seen:
            assert calls.check("rt", limits, tokens=10).allowed
        assert seen == ["EVALSHA", "SCRIPT", "EVALSHA"]  # NOSCRIPT: loaded, then run
        assert limiter.backend_status()["fallbacks"] == 0


@pytest.mark.redis
def test_a_full_window_stays_small_and_expires(settings, key_id):
    from infra.redis_clients import redis_client

    limits = [rpm(10**6), tpm(10**9)]
    for second in range(120):  # every bucket of the window holds a count
        calls.check(key_id, limits, now_ms=int(time.time() * 1000) + second * 500, tokens=99_999)
    client = redis_client()
    for suffix in ("rpm", "tpm"):
        key = f"rl:{{{key_id}}}:{suffix}"
        assert client.hlen(key) <= 2 * 61 + 3  # a count and a latest admission per bucket
        assert client.object("encoding", key) == b"listpack"
        assert client.memory_usage(key) < 1_536
        assert 0 < client.pttl(key) <= MINUTE + 1_000


@pytest.mark.redis
@needs_redis_server
def test_a_redis_outage_falls_back_to_limiting_per_process_and_recovers(settings, caplog):
    settings.REDIS_RETRY_SECONDS = 0.1
    limits = [rpm(5)]
    caplog.set_level(logging.WARNING, logger="infra.breaker")
    with redis_process() as server:
        settings.REDIS_URL = server.url
        before = [calls.check("out", limits) for _ in range(3)]
        assert [(d.allowed, d.backend) for d in before] == [(True, "redis")] * 3
        assert limiter.backend_status()["backend"] == "redis"

        server.stop()
        during = [calls.check("out", limits) for _ in range(8)]
        # still limiting, per process, on a fresh count
        assert [d.allowed for d in during] == [True] * 5 + [False] * 3
        assert {d.backend for d in during} == {"local"}
        assert not asyncio.run(calls.acheck("out", limits)).allowed  # one breaker for both
        status = limiter.backend_status()
        assert status["backend"] == "local" and status["redis_down_since"]
        assert status["fallbacks"] == 9
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "Redis unreachable" in errors[0].getMessage()
        assert "rate limiters run per process" in errors[0].getMessage()

        server.start()  # empty: the server kept nothing
        time.sleep(0.15)
        after = calls.check("out", limits)
        # back on Redis, which now holds what this process admitted during the outage
        assert (after.allowed, after.backend, after.windows[0].used) == (False, "redis", 5)
        assert limiter.backend_status() == {
            "backend": "redis",
            "redis_down_since": None,
            "fallbacks": 9,
        }
        assert any("Redis reachable again" in r.getMessage() for r in caplog.records)
        assert limiter.store.keys == {}
        limiter.reset("out")


@pytest.mark.redis
def test_the_servers_shutdown_sends_the_settlements_still_pending(key_id):
    from aibaas.gateway.lifespan import shutdown

    limits = [tpm(10_000)]

    async def run():
        decision = await calls.acheck(key_id, limits, tokens=300)
        await limiter.asettle(key_id, limits, admitted_at_ms=decision.at_ms, token_delta=-200)
        pending = key_id in limiter.pending.keys
        await shutdown()  # before the settlement's own timer
        return pending

    assert asyncio.run(run())
    assert key_id not in limiter.pending.keys
    assert [w.used for w in limiter.peek(key_id, limits)] == [100]
