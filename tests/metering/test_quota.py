"""The monthly quota (metering/quota/): one conditional UPDATE per admission, lazy rollover,
settlement, failure modes, the reset service, `manage.py reset_usage` and the admin actions.

The concurrency tests need PostgreSQL (row locks, many connections); they skip without it.
"""

import asyncio
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, connections
from django.urls import reverse

from accounts.actors import Actor
from accounts.models import AuditEvent
from metering.models import QuotaCounter
from metering.quota import (
    QuotaAsk,
    QuotaUnavailable,
    aquota_admit_start,
    aquota_settle,
    period_for,
    quota_reset,
    quota_usage,
)
from metering.quota import counter as quota_counter
from tests.factories import OrganizationFactory

NOV = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
NOV_1 = date(2026, 11, 1)
DEC_1 = date(2026, 12, 1)


def admit(org, now=NOV, requests=None, tokens_limit=None, tokens=0):
    return quota_counter.admit(
        QuotaAsk(org.pk, request_limit=requests, token_limit=tokens_limit, tokens=tokens, now=now)
    )


def counter(org, period=NOV_1) -> tuple[int, int] | None:
    row = QuotaCounter.objects.filter(organization=org, period=period).first()
    return None if row is None else (row.requests, row.tokens)


def close_thread_connections(executor: ThreadPoolExecutor, workers: int) -> None:
    """Run connections.close_all() once in every thread of the executor: each task waits at a
    barrier until all `workers` tasks run, so no thread can take two."""
    barrier = threading.Barrier(workers)

    def close() -> None:
        barrier.wait(timeout=30)
        connections.close_all()

    for future in [executor.submit(close) for _ in range(workers)]:
        future.result(timeout=60)


@pytest.fixture
def fail_queries():
    """Every SQL statement of this thread fails as if the server had gone away."""

    def fail(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(fail):
        yield


# --- periods --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "period"),
    [
        (datetime(2026, 11, 1, 0, 0, tzinfo=UTC), date(2026, 11, 1)),
        (datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC), date(2026, 11, 1)),
        (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), date(2026, 12, 1)),
        # 2027-01-01 00:30 in UTC is still December 31 in New York: the month is UTC's.
        (datetime.fromisoformat("2026-12-31T19:30:00-05:00"), date(2027, 1, 1)),
        (datetime(2026, 2, 10, 5, 0), date(2026, 2, 1)),  # naive = UTC
    ],
)
def test_period_is_the_first_day_of_the_utc_month(now, period):
    assert period_for(now) == period


# --- admission ----------------------------------------------------------------------------------


def test_unlimited_organization_is_admitted_without_sql(org, django_assert_num_queries):
    with django_assert_num_queries(0):
        decision = admit(org, tokens=500)
    assert decision.allowed
    assert decision.exceeded is None
    assert decision.counted is False
    assert decision.retry_after == 0
    assert decision.period == NOV_1
    assert decision.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert not QuotaCounter.objects.exists()


def test_first_request_of_the_month_creates_the_row_and_counts(org):
    decision = admit(org, requests=10, tokens_limit=1000, tokens=40)
    assert decision.allowed
    assert decision.counted
    assert (decision.requests_used, decision.tokens_used) == (1, 40)
    assert (decision.request_limit, decision.token_limit) == (10, 1000)
    assert counter(org) == (1, 40)


def test_admission_of_an_existing_month_is_one_statement(org, django_assert_num_queries):
    admit(org, requests=10)
    with django_assert_num_queries(1):
        decision = admit(org, requests=10, tokens=5)
    assert (decision.requests_used, decision.tokens_used) == (2, 5)


def test_request_limit_refuses_the_request_past_it(org, django_assert_num_queries):
    for used in (1, 2, 3):
        assert admit(org, requests=3).requests_used == used
    with django_assert_num_queries(2):  # the refused UPDATE, one read to explain it
        refused = admit(org, requests=3)
    assert not refused.allowed
    assert refused.exceeded == "requests"
    assert not refused.counted
    assert (refused.requests_used, refused.tokens_used) == (3, 0)
    assert refused.retry_after == (datetime(2026, 12, 1, tzinfo=UTC) - NOV).total_seconds()
    assert counter(org) == (3, 0)


def test_token_limit_refuses_an_estimate_that_does_not_fit(org):
    assert admit(org, tokens_limit=100, tokens=40).tokens_used == 40
    assert admit(org, tokens_limit=100, tokens=40).tokens_used == 80
    refused = admit(org, tokens_limit=100, tokens=40)
    assert (refused.allowed, refused.exceeded, refused.tokens_used) == (False, "tokens", 80)
    assert admit(org, tokens_limit=100, tokens=20).tokens_used == 100  # exactly at the limit
    # Nothing left: even a request that estimates 0 tokens is refused.
    refused = admit(org, tokens_limit=100, tokens=0)
    assert (refused.allowed, refused.exceeded) == (False, "tokens")
    assert counter(org) == (3, 100)


def test_tokens_are_counted_without_a_token_limit(org):
    admit(org, requests=10, tokens=70)
    admit(org, requests=10, tokens=30)
    assert counter(org) == (2, 100)


def test_request_limit_is_named_first_when_both_are_reached(org):
    admit(org, requests=1, tokens_limit=10, tokens=10)
    refused = admit(org, requests=1, tokens_limit=10, tokens=1)
    assert refused.exceeded == "requests"


@pytest.mark.parametrize(("requests", "tokens_limit"), [(0, None), (None, 0), (5, 3)])
def test_zero_or_too_small_limits_refuse_the_first_request(org, requests, tokens_limit):
    decision = admit(org, requests=requests, tokens_limit=tokens_limit, tokens=4)
    assert not decision.allowed
    assert counter(org) == (0, 0)  # the month's row exists, nothing counted


def test_quotas_are_per_organization(org, other_org):
    admit(org, requests=1)
    assert not admit(org, requests=1).allowed
    assert admit(other_org, requests=1).allowed


def test_negative_estimate_is_a_programming_error(org):
    with pytest.raises(ValueError):
        admit(org, requests=1, tokens=-1)


# --- lazy rollover --------------------------------------------------------------------------------


def test_new_month_starts_from_zero_and_keeps_the_old_row(org):
    for _ in range(3):
        admit(org, requests=3, tokens=10)
    assert not admit(org, requests=3).allowed

    december = admit(org, now=DEC, requests=3, tokens=7)
    assert december.allowed
    assert december.period == DEC_1
    assert (december.requests_used, december.tokens_used) == (1, 7)
    assert counter(org, NOV_1) == (3, 30)
    assert counter(org, DEC_1) == (1, 7)
    assert quota_usage(org.pk, now=DEC) == (DEC_1, 1, 7)
    assert quota_usage(org.pk, now=NOV) == (NOV_1, 3, 30)


@pytest.mark.parametrize(
    ("now", "resets_at", "retry_after"),
    [
        ("2026-11-30T23:59:30+00:00", "2026-12-01T00:00:00+00:00", 30),
        ("2026-11-30T23:59:59.500000+00:00", "2026-12-01T00:00:00+00:00", 1),
        ("2026-12-31T23:00:00+00:00", "2027-01-01T00:00:00+00:00", 3600),
        ("2026-12-31T22:00:00-05:00", "2027-02-01T00:00:00+00:00", 31 * 86400 - 3 * 3600),
    ],
)
def test_refusal_says_when_the_quota_resets(org, now, resets_at, retry_after):
    now = datetime.fromisoformat(now)
    admit(org, now=now, requests=1)
    refused = admit(org, now=now, requests=1)
    assert not refused.allowed
    assert refused.resets_at == datetime.fromisoformat(resets_at)
    assert refused.retry_after == retry_after


MONTH_END = int((datetime(2026, 12, 1, tzinfo=UTC) - NOV).total_seconds())


@pytest.mark.parametrize(
    ("limit", "leased_requests", "due_in", "retry_after"),
    [
        (5, 3, timedelta(seconds=1.5), 2),  # only the leases' room refuses: back within 2 s
        (5, 3, timedelta(seconds=0.2), 1),
        (5, 3, timedelta(minutes=5), 2),  # another server's clock ahead: never past the bound
        (5, 3, -timedelta(seconds=1), MONTH_END),  # overdue: their processes died
        (5, 0, timedelta(seconds=1.5), MONTH_END),  # no lease out
        (3, 2, timedelta(seconds=1.5), MONTH_END),  # spent even if the leases were all unused
    ],
)
def test_a_refusal_says_retry_in_seconds_only_when_leases_hold_the_room(
    org, limit, leased_requests, due_in, retry_after
):
    """Other processes' leases (lease.py) hold part of what is used until leased_until: a
    request refused only because of them may fit once they are given back."""
    for _ in range(5):
        admit(org, requests=5)
    QuotaCounter.objects.filter(organization=org).update(
        leased_requests=leased_requests, leased_until=NOV + due_in
    )
    refused = admit(org, requests=limit)
    assert not refused.allowed and refused.exceeded == "requests"
    assert refused.retry_after == retry_after


# --- settlement ---------------------------------------------------------------------------------


def test_settle_moves_tokens_up_and_down_never_below_zero(org):
    decision = admit(org, tokens_limit=1000, tokens=100)
    quota_counter.settle(org.pk, period=decision.period, token_delta=+25)
    assert counter(org) == (1, 125)
    quota_counter.settle(org.pk, period=decision.period, token_delta=-60)
    assert counter(org) == (1, 65)
    quota_counter.settle(org.pk, period=decision.period, token_delta=-1000)
    assert counter(org) == (1, 0)


def test_release_gives_back_a_request_refused_later(org):
    admit(org, requests=1, tokens=30)
    decision = admit(org, now=NOV, requests=2, tokens=30)
    quota_counter.settle(org.pk, period=decision.period, request_delta=-1, token_delta=-30)
    assert counter(org) == (1, 30)
    assert admit(org, requests=2).allowed  # the released slot is free again
    quota_counter.settle(org.pk, period=NOV_1, request_delta=-5)
    assert counter(org) == (0, 30)


def test_settle_goes_to_the_month_the_request_was_admitted_in(org):
    november = admit(org, now=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), requests=5, tokens=10)
    admit(org, now=DEC, requests=5, tokens=10)
    quota_counter.settle(org.pk, period=november.period, token_delta=90)
    assert counter(org, NOV_1) == (1, 100)
    assert counter(org, DEC_1) == (1, 10)


def test_settle_of_nothing_runs_no_sql(org, django_assert_num_queries):
    with django_assert_num_queries(0):
        quota_counter.settle(org.pk, period=NOV_1)


# --- the database fails -------------------------------------------------------------------------


def test_database_error_refuses_by_default(org, settings, caplog, fail_queries):
    settings.QUOTA_FAIL_OPEN = False
    with (
        caplog.at_level(logging.ERROR, logger="metering.quota"),
        pytest.raises(QuotaUnavailable) as refused,
    ):
        admit(org, requests=100)
    assert "request refused" in caplog.text
    assert "server closed the connection" in refused.value.detail


def test_quota_unavailable_is_a_503_with_retry_after_in_the_openai_shape():
    from metering.quota.decision import QUOTA_UNAVAILABLE, QUOTA_UNAVAILABLE_RETRY_SECONDS

    error = QuotaUnavailable("connection refused")
    assert error.status == 503
    assert error.headers == {"Retry-After": str(QUOTA_UNAVAILABLE_RETRY_SECONDS)}
    body = error.as_dict()["error"]
    assert body["code"] == QUOTA_UNAVAILABLE
    assert body["retry_after"] == QUOTA_UNAVAILABLE_RETRY_SECONDS
    assert "connection refused" not in body["message"]  # the database's words stay in the logs


def test_database_error_admits_unmetered_when_fail_open(org, settings, caplog, fail_queries):
    settings.QUOTA_FAIL_OPEN = True
    with caplog.at_level(logging.ERROR, logger="metering.quota"):
        decision = admit(org, requests=100, tokens=10)
    assert decision.allowed
    assert decision.counted is False
    assert decision.exceeded is None
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "QUOTA_FAIL_OPEN" in caplog.text


def test_settle_error_is_quota_unavailable(org, fail_queries):
    with pytest.raises(QuotaUnavailable):
        quota_counter.settle(org.pk, period=NOV_1, token_delta=5)


# --- async --------------------------------------------------------------------------------------


def run_async(coroutine_function, workers: int = 8):
    """Run coroutine_function() on a fresh event loop whose default executor (the one
    sync_to_async(thread_sensitive=False) uses) is ours, then close its threads' connections."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quota-test")

    async def main():
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            return await coroutine_function()
        finally:
            close_thread_connections(executor, workers)

    return asyncio.run(main())


@pytest.mark.django_db(transaction=True)
def test_aquota_admit_and_settle_from_the_event_loop(org):
    async def scenario():
        first = await aquota_admit_start(
            QuotaAsk(org.pk, request_limit=2, token_limit=None, tokens=10, now=NOV)
        )
        await aquota_settle(org.pk, period=first.period, token_delta=5)
        second = await aquota_admit_start(
            QuotaAsk(org.pk, request_limit=2, token_limit=None, now=NOV)
        )
        third = await aquota_admit_start(
            QuotaAsk(org.pk, request_limit=2, token_limit=None, now=NOV)
        )
        unlimited = await aquota_admit_start(
            QuotaAsk(org.pk, request_limit=None, token_limit=None, now=NOV)
        )
        return first, second, third, unlimited

    first, second, third, unlimited = run_async(scenario, workers=2)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.exceeded == "requests"
    assert unlimited.allowed and not unlimited.counted
    assert counter(org) == (2, 15)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_50_concurrent_async_admissions_on_a_quota_of_20_admit_exactly_20(org):
    async def scenario():
        return await asyncio.gather(
            *(
                aquota_admit_start(QuotaAsk(org.pk, request_limit=20, token_limit=None, tokens=1))
                for _ in range(50)
            )
        )

    decisions = run_async(scenario, workers=16)
    assert sum(d.allowed for d in decisions) == 20
    assert {d.exceeded for d in decisions if not d.allowed} == {"requests"}
    assert sorted(d.requests_used for d in decisions if d.allowed) == list(range(1, 21))
    assert quota_usage(org.pk) == (period_for(datetime.now(UTC)), 20, 20)


# --- concurrency (PostgreSQL) -------------------------------------------------------------------

THREADS = 30  # each with its own connection; the server allows 100 in all
PER_THREAD = 10


def admit_concurrently(org, **limits) -> list:
    """THREADS threads released together, PER_THREAD admissions each (300 in all), on a month
    with no row yet: the first requests race to create it as well."""
    barrier = threading.Barrier(THREADS)
    results: list = []
    lock = threading.Lock()

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            mine = [
                quota_counter.admit(QuotaAsk(org.pk, now=NOV, **limits)) for _ in range(PER_THREAD)
            ]
            with lock:
                results.extend(mine)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == THREADS * PER_THREAD
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_300_concurrent_admissions_on_a_request_quota_of_100_admit_exactly_100(org):
    results = admit_concurrently(org, request_limit=100, token_limit=None)
    allowed = [d for d in results if d.allowed]
    refused = [d for d in results if not d.allowed]
    assert len(allowed) == 100
    assert len(refused) == 200
    assert {d.exceeded for d in refused} == {"requests"}
    assert sorted(d.requests_used for d in allowed) == list(range(1, 101))
    assert counter(org) == (100, 0)
    assert QuotaCounter.objects.filter(organization=org).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_300_concurrent_admissions_on_a_token_quota_never_pass_it(org):
    results = admit_concurrently(org, request_limit=None, token_limit=1000, tokens=7)
    allowed = [d for d in results if d.allowed]
    assert len(allowed) == 1000 // 7  # 142 requests, 994 tokens
    assert {d.exceeded for d in results if not d.allowed} == {"tokens"}
    assert sorted(d.tokens_used for d in allowed) == [7 * n for n in range(1, 143)]
    assert counter(org) == (142, 994)


# --- reset: service, command, admin -------------------------------------------------------------


@pytest.fixture
def november(time_machine):
    time_machine.move_to(NOV, tick=False)


def reset_events(org):
    return list(AuditEvent.objects.filter(organization=org, action="quota.reset"))


def test_reset_zeroes_this_month_only_and_is_audited(org, november):
    admit(org, now=datetime(2026, 10, 20, tzinfo=UTC), requests=10, tokens=5)
    for _ in range(4):
        admit(org, requests=10, tokens=25)
    quota_reset(org, actor=Actor.for_system("tests"), reason="goodwill")
    assert counter(org, NOV_1) == (0, 0)
    assert counter(org, date(2026, 10, 1)) == (1, 5)
    after = admit(org, requests=10)
    assert (after.requests_used, after.generation) == (1, 1)
    [event] = reset_events(org)
    assert event.actor_label == "tests"
    assert (event.target_type, event.target_id) == ("quota", "2026-11")
    assert event.metadata == {
        "period": "2026-11-01",
        "requests_before": 4,
        "tokens_before": 100,
        "generation": 1,
        "reason": "goodwill",
    }


def test_reset_of_a_month_without_usage_creates_no_row(org, november):
    quota_reset(org, actor=Actor.for_system("tests"))
    assert not QuotaCounter.objects.exists()
    [event] = reset_events(org)
    assert event.metadata["requests_before"] == 0


def reset_usage(*args: str) -> str:
    out = io.StringIO()
    call_command("reset_usage", *args, stdout=out)
    return out.getvalue()


def test_reset_usage_command_prints_before_and_after(org, november):
    for _ in range(3):
        admit(org, requests=10, tokens=11)
    output = reset_usage(org.slug, "--reason", "support ticket 42")
    assert output.strip() == f"{org.slug} 2026-11: requests 3 -> 0, tokens 33 -> 0"
    assert counter(org) == (0, 0)
    [event] = reset_events(org)
    assert event.actor_label == "manage.py reset_usage"
    assert event.metadata["reason"] == "support ticket 42"


def test_reset_usage_command_json_and_org_option(org, november):
    admit(org, requests=10, tokens=5)
    result = json.loads(reset_usage("--org", org.slug, "--json"))
    assert result == {
        "organization": org.slug,
        "period": "2026-11",
        "before": {"requests": 1, "tokens": 5},
        "after": {"requests": 0, "tokens": 0},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "No organization with slug 'nope'"),
        (["--org", "nope"], "No organization with slug 'nope'"),
        ([], "Give the organization's slug"),
    ],
)
def test_reset_usage_command_refuses_an_unknown_or_missing_org(db, args, message):
    with pytest.raises(CommandError, match=message):
        reset_usage(*args)
    assert not AuditEvent.objects.filter(action="quota.reset").exists()


@pytest.fixture
def operator_client(client, db):
    user = get_user_model().objects.create_superuser(email="ops@example.com", password="!")
    client.force_login(user)
    return client


def test_admin_lists_and_searches_counters_read_only(operator_client, org, other_org, november):
    admit(org, requests=10, tokens=3)
    admit(other_org, requests=10)
    url = reverse("admin:metering_quotacounter_changelist")
    response = operator_client.get(url, {"q": org.slug})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [QuotaCounter.objects.get(organization=org)]
    assert operator_client.get(url, {"period__gte": "2026-11-01"}).status_code == 200
    assert operator_client.get(reverse("admin:metering_quotacounter_add")).status_code == 403
    row = QuotaCounter.objects.get(organization=org)
    change = reverse("admin:metering_quotacounter_change", args=[row.pk])
    assert operator_client.post(change, {"requests": 0}).status_code == 403
    assert counter(org) == (1, 3)


def test_admin_counter_action_resets_this_month_and_skips_past_months(
    operator_client, org, other_org, november
):
    admit(org, requests=10, tokens=3)
    admit(other_org, requests=10, tokens=4)
    admit(org, now=datetime(2026, 10, 5, tzinfo=UTC), requests=10, tokens=9)
    selected = QuotaCounter.objects.filter(organization=org)  # November and October
    response = operator_client.post(
        reverse("admin:metering_quotacounter_changelist"),
        {"action": "reset_quota", "_selected_action": [row.pk for row in selected]},
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert "Reset this month's quota of 1 organization(s)." in messages
    assert any("Skipped 1 counter(s) of past months" in m for m in messages)
    assert counter(org) == (0, 0)
    assert counter(org, date(2026, 10, 1)) == (1, 9)
    assert counter(other_org) == (1, 4)
    [event] = reset_events(org)
    assert event.actor_label == "ops@example.com"
    assert event.ip == "127.0.0.1"


def test_admin_organization_action_resets_this_months_quota(
    operator_client, org, other_org, november
):
    admit(org, requests=10, tokens=3)
    admit(other_org, requests=10, tokens=4)
    third = OrganizationFactory()
    response = operator_client.post(
        reverse("admin:accounts_organization_changelist"),
        {"action": "reset_quota", "_selected_action": [org.pk, third.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Reset this month's quota of 2 organization(s)." in [
        str(m) for m in response.context["messages"]
    ]
    assert counter(org) == (0, 0)
    assert counter(other_org) == (1, 4)
    assert len(reset_events(org)) == 1
    assert len(reset_events(third)) == 1


def test_staff_without_the_permission_cannot_reset(client, org, november):
    staff = get_user_model().objects.create_user(
        email="viewer@example.com", password="!", is_staff=True
    )
    # May see and edit organizations, but not the quota counters.
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="accounts",
            codename__in=["view_organization", "change_organization"],
        )
    )
    client.force_login(staff)
    admit(org, requests=10)
    url = reverse("admin:accounts_organization_changelist")
    assert "reset_quota" not in client.get(url).content.decode()
    client.post(url, {"action": "reset_quota", "_selected_action": [org.pk]})
    assert counter(org) == (1, 0)
    assert not reset_events(org)
