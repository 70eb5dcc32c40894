"""Raw key -> KeyContext: cheap refusals, a warm path without SQL or argon2, prompt changes."""

import asyncio
import threading
from datetime import timedelta

import pytest
from django.core.cache import cache, caches
from django.db import connections
from django.utils import timezone

from accounts.actors import Actor
from accounts.services import organization_set_plan
from billing.models import Plan
from keys import format as key_format
from keys import hashing, verification
from keys.services import api_key_revoke, api_key_rotate, api_key_update
from keys.verification import (
    INVALID_API_KEY,
    KEY_EXPIRED,
    KEY_REVOKED,
    VERIFICATION_BUSY,
    KeyContext,
    KeyRejected,
    authenticate_key,
)
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db

SYSTEM = Actor.for_system("tests")
CACHE_METHODS = (
    "get",
    "get_many",
    "set",
    "set_many",
    "add",
    "incr",
    "decr",
    "delete",
    "delete_many",
    "has_key",
    "touch",
    "get_or_set",
)


@pytest.fixture
def cache_calls(monkeypatch) -> list[str]:
    """Names of the shared-cache methods called from now on (the calls still go through).

    Only outermost calls count: the in-process backend implements get_many with get.
    """
    calls: list[str] = []
    depth = threading.local()
    backend = caches["default"]  # what django.core.cache.cache stands for in this thread
    for name in CACHE_METHODS:
        original = getattr(backend, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            level = getattr(depth, "level", 0)
            if level == 0:
                calls.append(_name)
            depth.level = level + 1
            try:
                return _original(*args, **kwargs)
            finally:
                depth.level = level

        monkeypatch.setattr(backend, name, spy)
    return calls


@pytest.fixture
def argon2_runs(monkeypatch) -> list[str]:
    """Key ids of the argon2 verifications run from now on (each still runs for real)."""
    runs: list[str] = []
    original = hashing.check_key_hash

    def spy(raw: str, encoded: str) -> bool:
        runs.append(raw[8:20])
        return original(raw, encoded)

    monkeypatch.setattr(verification, "check_key_hash", spy)
    return runs


def rejected(raw: str) -> KeyRejected:
    with pytest.raises(KeyRejected) as caught:
        authenticate_key(raw)
    return caught.value


def other_secret(key_id: str) -> str:
    """A well-formed key (valid checksum) for an existing key id, with a wrong secret."""
    return key_format.generate(key_id=key_id).raw


# --- the context -----------------------------------------------------------------------------


def test_valid_key_gives_its_context(make_key, org, owner):
    issued = make_key(
        org,
        actor=Actor(user=owner.user, role=owner.role),
        name="prod backend",
        scopes=["usage:read", "inference"],
        models=["demo-small", "demo-large"],
    )
    context = authenticate_key(issued.raw_key)
    assert isinstance(context, KeyContext)
    assert context.pk == issued.api_key.pk
    assert context.key_id == issued.api_key.key_id
    assert context.name == "prod backend"
    assert context.organization_id == org.pk
    assert context.organization_slug == org.slug
    assert context.plan_slug == "free"
    assert context.scopes == frozenset({"inference", "usage:read"})
    assert context.models == ("demo-large", "demo-small")
    assert context.test_mode is False
    assert context.expires_at is None
    assert context.revoked_at is None
    assert context.created_by_id == owner.user.pk
    assert context.has_scope("inference")
    assert not context.has_scope("keys:write")
    assert context.allows_model("demo-small")
    assert not context.allows_model("gpt-4o")


def test_test_mode_key_gives_a_test_mode_context(make_key, org):
    issued = make_key(org, test_mode=True)
    assert issued.raw_key.startswith("sk_test_")
    assert authenticate_key(issued.raw_key).test_mode is True


def test_admin_scope_implies_every_scope_and_no_allow_list_allows_every_model(make_key, org):
    context = authenticate_key(make_key(org, scopes=["admin"]).raw_key)
    assert all(context.has_scope(s) for s in ("inference", "usage:read", "keys:write"))
    assert context.models is None
    assert context.allows_model("anything")


def test_context_limits_are_the_plans_limits_by_default(issued):
    plan = Plan.objects.get(slug="free")
    limits = authenticate_key(issued.raw_key).limits
    assert limits == {
        "requests_per_minute": plan.requests_per_minute,
        "requests_per_day": plan.requests_per_day,
        "tokens_per_minute": plan.tokens_per_minute,
        "tokens_per_day": plan.tokens_per_day,
        "monthly_request_quota": plan.monthly_request_quota,
        "monthly_token_quota": plan.monthly_token_quota,
        "burst_percent": plan.burst_percent,
        "burst_seconds": plan.burst_seconds,
    }


def test_per_key_limit_overrides_replace_the_plans_limits(make_key, org):
    plan = Plan.objects.get(slug="free")
    issued = make_key(org, requests_per_minute=5, tokens_per_day=777)
    limits = authenticate_key(issued.raw_key).limits
    assert limits["requests_per_minute"] == 5
    assert limits["tokens_per_day"] == 777
    assert limits["requests_per_day"] == plan.requests_per_day
    assert limits["tokens_per_minute"] == plan.tokens_per_minute
    assert limits["monthly_request_quota"] == plan.monthly_request_quota


# --- malformed keys: refused before any I/O --------------------------------------------------


def _flip_last(raw: str) -> str:
    return raw[:-1] + ("A" if raw[-1] != "A" else "B")


def _flip_secret(raw: str) -> str:
    return raw[:30] + ("x" if raw[30] != "x" else "y") + raw[31:]


MALFORMED = {
    "empty": lambda raw: "",
    "whitespace": lambda raw: "   ",
    "prefix only": lambda raw: "sk_live_",
    "bad checksum": _flip_last,
    "one secret char changed": _flip_secret,
    "truncated": lambda raw: raw[:-1],
    "trailing garbage": lambda raw: raw + "x",
    "leading space": lambda raw: " " + raw,
    "wrong prefix": lambda raw: "sk_prod_" + raw[8:],
    "bearer inside": lambda raw: "Bearer " + raw,
    "twice": lambda raw: raw + raw,
    "sql": lambda raw: "' OR 1=1 --",
    "unicode": lambda raw: "sk_live_🔑" + raw[10:],
    "huge": lambda raw: raw * 200,
    "control chars": lambda raw: "\x01\x02\x1b[31m" + raw[5:],
}


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_key_is_refused_without_database_or_cache(
    issued, mangle, django_assert_num_queries, cache_calls
):
    raw = mangle(issued.raw_key)
    with django_assert_num_queries(0):
        error = rejected(raw)
    assert error.code == INVALID_API_KEY
    assert error.status == 401
    assert cache_calls == []


# --- the warm path ---------------------------------------------------------------------------


def test_warm_check_in_the_same_process_makes_no_sql_and_no_cache_call(
    issued, django_assert_num_queries, cache_calls, argon2_runs
):
    authenticate_key(issued.raw_key)
    cache_calls.clear()
    with django_assert_num_queries(0):
        for _ in range(50):
            assert authenticate_key(issued.raw_key).key_id == issued.api_key.key_id
    assert cache_calls == []
    assert argon2_runs == []


def test_warm_check_from_the_shared_cache_is_one_round_trip_and_no_sql(
    issued, django_assert_num_queries, cache_calls
):
    authenticate_key(issued.raw_key)
    verification.clear_local()  # as another process would be: only the shared cache is warm
    cache_calls.clear()
    with django_assert_num_queries(0):
        authenticate_key(issued.raw_key)
    assert cache_calls == ["get_many"]


def test_a_freshly_issued_key_is_primed_so_its_first_use_runs_no_argon2(
    make_key, org, argon2_runs, django_assert_num_queries
):
    issued = make_key(org, prime=True)
    with django_assert_num_queries(1):  # the authorization context, once
        authenticate_key(issued.raw_key)
    assert argon2_runs == []


def test_cold_key_runs_argon2_on_first_use_only(
    make_key, org, argon2_runs, django_assert_num_queries
):
    issued = make_key(org, prime=False)
    with django_assert_num_queries(1):  # one row gives both the context and the hash
        authenticate_key(issued.raw_key)
    assert argon2_runs == [issued.api_key.key_id]
    for _ in range(5):
        verification.clear_local()
        authenticate_key(issued.raw_key)
    assert len(argon2_runs) == 1


def test_verifier_runs_argon2_again_only_after_the_cache_lost_it(make_key, org, argon2_runs):
    issued = make_key(org, prime=False)
    authenticate_key(issued.raw_key)
    verification.clear_local()
    cache.delete(verification.verifier_cache_key(issued.api_key.key_id))
    authenticate_key(issued.raw_key)
    assert len(argon2_runs) == 2


def test_wrong_secret_for_a_cached_key_never_runs_argon2(
    issued, argon2_runs, django_assert_num_queries
):
    authenticate_key(issued.raw_key)
    with django_assert_num_queries(0):
        for attempt in range(30):
            if attempt % 2:
                verification.clear_local()
            assert rejected(other_secret(issued.api_key.key_id)).code == INVALID_API_KEY
    assert argon2_runs == []
    assert authenticate_key(issued.raw_key).key_id == issued.api_key.key_id


@pytest.mark.parametrize("max_failures", [1, 3])
def test_wrong_secrets_on_a_cold_key_run_argon2_at_most_the_configured_times(
    make_key, org, argon2_runs, settings, max_failures
):
    settings.API_KEY_MAX_FAILED_VERIFICATIONS = max_failures
    issued = make_key(org, prime=False)
    for _ in range(max_failures + 5):
        verification.clear_local()
        assert rejected(other_secret(issued.api_key.key_id)).code == INVALID_API_KEY
    assert len(argon2_runs) == max_failures


def test_unknown_key_id_is_refused_and_the_miss_is_remembered(db, django_assert_num_queries):
    unknown = key_format.generate().raw
    with django_assert_num_queries(1):
        assert rejected(unknown).code == INVALID_API_KEY
    with django_assert_num_queries(0):
        for _ in range(10):
            assert rejected(unknown).code == INVALID_API_KEY


def test_argon2_slots_all_taken_answers_503_busy_instead_of_queueing_forever(
    make_key, org, settings
):
    issued = make_key(org, prime=False)
    settings.API_KEY_ARGON2_WAIT_SECONDS = 0.05
    slots = hashing._slots()
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        assert taken == settings.API_KEY_ARGON2_MAX_CONCURRENCY
        error = rejected(issued.raw_key)
    finally:
        for _ in range(taken):
            slots.release()
    assert (error.code, error.status) == (VERIFICATION_BUSY, 503)
    assert authenticate_key(issued.raw_key).key_id == issued.api_key.key_id  # slots free again


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_uses_of_a_cold_key_run_argon2_once(make_key, argon2_runs, owner):
    issued = make_key(owner.organization, prime=False)
    results: list[str] = []
    start = threading.Barrier(6)

    def use():
        try:
            start.wait()
            results.append(authenticate_key(issued.raw_key).key_id)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [issued.api_key.key_id] * 6
    assert argon2_runs == [issued.api_key.key_id]


def test_cache_holds_neither_the_key_nor_its_hash(issued):
    authenticate_key(issued.raw_key)
    key_id = issued.api_key.key_id
    stored = {
        "verifier": cache.get(verification.verifier_cache_key(key_id)),
        "context": cache.get(verification.context_cache_key(key_id)),
    }
    assert isinstance(stored["verifier"], bytes) and len(stored["verifier"]) == 32
    dumped = repr(stored)
    assert issued.raw_key not in dumped
    assert issued.raw_key[21:64] not in dumped  # the secret alone
    assert issued.api_key.key_hash not in dumped
    assert "argon2" not in dumped


# --- revocation, expiry, rotation, edits -----------------------------------------------------


def test_revoked_key_is_refused_with_key_revoked_on_the_next_check(issued):
    authenticate_key(issued.raw_key)  # warm in this process and in the shared cache
    api_key_revoke(api_key=issued.api_key, actor=SYSTEM, reason="leaked")
    error = rejected(issued.raw_key)
    assert (error.code, error.status) == (KEY_REVOKED, 401)
    verification.clear_local()
    assert rejected(issued.raw_key).code == KEY_REVOKED


def test_revocation_over_http_is_effective_on_the_next_request(issued, owner_client, api_client):
    assert api_client.get("/v1/key", **bearer(issued.raw_key)).status_code == 200
    response = owner_client.post(
        f"/api/keys/{issued.api_key.key_id}/revoke",
        {"reason": "leaked"},
        content_type="application/json",
    )
    assert response.status_code == 200
    response = api_client.get("/v1/key", **bearer(issued.raw_key))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == KEY_REVOKED


def test_wrong_secret_for_a_revoked_key_is_invalid_not_revoked(issued):
    api_key_revoke(api_key=issued.api_key, actor=SYSTEM)
    # Only the holder of the real key learns that it was revoked.
    assert rejected(other_secret(issued.api_key.key_id)).code == INVALID_API_KEY


def test_expired_key_is_refused_with_key_expired(make_key, org, time_machine):
    now = timezone.now()
    issued = make_key(org, expires_at=now + timedelta(hours=1))
    time_machine.move_to(now + timedelta(minutes=59), tick=False)
    context = authenticate_key(issued.raw_key)  # warm everywhere
    assert context.expires_at == pytest.approx((now + timedelta(hours=1)).timestamp())
    time_machine.move_to(now + timedelta(hours=1, seconds=1), tick=False)
    error = rejected(issued.raw_key)
    assert (error.code, error.status) == (KEY_EXPIRED, 401)


def test_rotated_key_stays_valid_for_the_grace_period_then_expires(
    make_key, org, time_machine, django_capture_on_commit_callbacks
):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    old = make_key(org)
    authenticate_key(old.raw_key)
    with django_capture_on_commit_callbacks(execute=True):
        new = api_key_rotate(api_key=old.api_key, actor=SYSTEM, grace=timedelta(hours=1))
    assert authenticate_key(old.raw_key).key_id == old.api_key.key_id
    assert authenticate_key(new.raw_key).key_id == new.api_key.key_id
    time_machine.move_to(now + timedelta(minutes=59), tick=False)
    assert authenticate_key(old.raw_key).key_id == old.api_key.key_id
    time_machine.move_to(now + timedelta(hours=1, seconds=1), tick=False)
    assert rejected(old.raw_key).code == KEY_EXPIRED
    assert authenticate_key(new.raw_key).key_id == new.api_key.key_id


def test_rotation_with_zero_grace_expires_the_old_key_at_once(
    make_key, org, django_capture_on_commit_callbacks
):
    old = make_key(org)
    authenticate_key(old.raw_key)
    with django_capture_on_commit_callbacks(execute=True):
        new = api_key_rotate(api_key=old.api_key, actor=SYSTEM, grace=timedelta(0))
    assert rejected(old.raw_key).code == KEY_EXPIRED
    assert authenticate_key(new.raw_key).key_id == new.api_key.key_id


def test_rotated_key_keeps_scopes_models_and_limits(make_key, org):
    old = make_key(
        org, scopes=["inference", "usage:read"], models=["demo-small"], requests_per_minute=7
    )
    new = api_key_rotate(api_key=old.api_key, actor=SYSTEM, grace=timedelta(0))
    context = authenticate_key(new.raw_key)
    assert context.scopes == frozenset({"inference", "usage:read"})
    assert context.models == ("demo-small",)
    assert context.limits["requests_per_minute"] == 7


def test_edit_is_reflected_in_the_next_check(issued):
    assert authenticate_key(issued.raw_key).scopes == frozenset({"inference"})
    api_key_update(
        api_key=issued.api_key,
        actor=SYSTEM,
        scopes=["usage:read"],
        models=["demo-small"],
        requests_per_minute=3,
        name="renamed",
    )
    context = authenticate_key(issued.raw_key)
    assert context.scopes == frozenset({"usage:read"})
    assert context.models == ("demo-small",)
    assert context.limits["requests_per_minute"] == 3
    assert context.name == "renamed"


def test_plan_change_is_reflected_in_the_next_check(make_key, org):
    keep = make_key(org, tokens_per_day=123)
    plain = make_key(org)
    assert authenticate_key(plain.raw_key).plan_slug == "free"
    assert authenticate_key(keep.raw_key).limits["tokens_per_day"] == 123
    pro = Plan.objects.get(slug="pro")
    organization_set_plan(organization=org, plan=pro)
    context = authenticate_key(plain.raw_key)
    assert context.plan_slug == "pro"
    assert context.limits["requests_per_minute"] == pro.requests_per_minute
    assert context.limits["monthly_request_quota"] == pro.monthly_request_quota
    kept = authenticate_key(keep.raw_key).limits
    assert kept["tokens_per_day"] == 123  # the key's override still wins
    assert kept["requests_per_day"] == pro.requests_per_day


def test_another_process_sees_a_revocation_within_the_local_ttl(issued, settings):
    """The shared cache entry is dropped at once; a process that still holds a local entry
    keeps it no longer than API_KEY_LOCAL_TTL."""
    authenticate_key(issued.raw_key)
    assert settings.API_KEY_LOCAL_TTL <= 1
    api_key_revoke(api_key=issued.api_key, actor=SYSTEM)
    key_id = issued.api_key.key_id
    assert cache.get(verification.context_cache_key(key_id)) is None
    verification.clear_local()  # the other process, once its local entry has run out
    assert rejected(issued.raw_key).code == KEY_REVOKED


# --- the async path: one load per key at a time ----------------------------------------------


@pytest.fixture
def thread_loads(monkeypatch) -> list[str]:
    """Raw keys loaded in a worker thread by aauthenticate_key from now on (still for real)."""
    loads: list[str] = []
    original = verification._authenticate_in_thread

    def spy(raw: str):
        loads.append(raw)
        return original(raw)

    monkeypatch.setattr(verification, "_authenticate_in_thread", spy)
    return loads


async def _burst(*raws: str) -> list:
    return await asyncio.gather(
        *(verification.aauthenticate_key(raw) for raw in raws), return_exceptions=True
    )


@pytest.mark.django_db(transaction=True)
def test_a_burst_on_a_key_whose_local_entry_expired_loads_it_once(issued, thread_loads):
    verification.clear_local()
    results = asyncio.run(_burst(*[issued.raw_key] * 50))
    assert [r.key_id for r in results] == [issued.api_key.key_id] * 50
    assert len(thread_loads) == 1


@pytest.mark.django_db(transaction=True)
def test_in_a_burst_a_wrong_secret_is_refused_and_the_right_ones_pass(issued, thread_loads):
    verification.clear_local()
    wrong = other_secret(issued.api_key.key_id)
    results = asyncio.run(_burst(wrong, issued.raw_key, wrong, issued.raw_key))
    assert isinstance(results[0], KeyRejected) and results[0].code == INVALID_API_KEY
    assert isinstance(results[2], KeyRejected)
    assert results[1].key_id == results[3].key_id == issued.api_key.key_id
    assert len(thread_loads) == 1  # the verifier was cached: the first load served them all


@pytest.mark.django_db(transaction=True)
def test_when_the_first_load_brings_nothing_the_others_load_on_their_own(
    make_key, owner, thread_loads, argon2_runs
):
    """A cold key (no cached verifier) whose first request has a wrong secret: that load
    stores nothing, and the right key behind it still gets in."""
    issued = make_key(owner.organization, prime=False)
    wrong = other_secret(issued.api_key.key_id)
    results = asyncio.run(_burst(wrong, issued.raw_key))
    assert isinstance(results[0], KeyRejected)
    assert results[1].key_id == issued.api_key.key_id
    assert len(thread_loads) == 2


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_is_refused_to_every_request_of_a_burst(issued, thread_loads):
    api_key_revoke(api_key=issued.api_key, actor=SYSTEM, reason="leaked")
    verification.clear_local()
    results = asyncio.run(_burst(*[issued.raw_key] * 10))
    assert {r.code for r in results} == {KEY_REVOKED}
    assert len(thread_loads) == 1
