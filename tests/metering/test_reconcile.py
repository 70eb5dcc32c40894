"""manage.py reconcile_usage: the quota counters against the billable usage events, and the
dead-letter stream; every difference printed, exit status 1 if any."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from accounts.actors import Actor
from billing.models import Plan
from metering.models import QuotaCounter, UsageEvent
from metering.quota import quota_reset
from metering.services import usage_record
from metering.usage.events import ENTRY_FIELD, dead_letter_key
from tests.metering.conftest import make_event
from tests.metering.test_settlement import admitted

pytestmark = pytest.mark.django_db


def reconcile(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("reconcile_usage", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


@pytest.fixture
def quota_org(org):
    org.plan = Plan.objects.create(
        slug="reconcile", name="Reconcile", monthly_request_quota=1_000, monthly_token_quota=None
    )
    org.save()
    return org


@pytest.fixture
def recorded(quota_org, issued):
    events = admitted(issued, 5)
    usage_record(events=events)
    return events


def test_agreeing_counters_and_events_exit_0(recorded, quota_org):
    output, error = reconcile()
    assert error is None
    assert f"{quota_org.slug} " in output and ": ok" in output
    assert output.rstrip().endswith("0 difference(s)")
    result = json.loads(reconcile("--json", "--org", quota_org.slug)[0])
    [row] = result["organizations"]
    assert row["counter"]["requests"] == row["events"]["requests"] == 5
    assert (
        row["counter"]["tokens"]
        == row["events"]["tokens"]
        == sum(e.input_tokens + e.output_tokens for e in recorded)
    )
    assert (row["differences"], result["differences"]) == ([], 0)


def test_a_tampered_counter_is_reported_and_exits_1(recorded, quota_org):
    QuotaCounter.objects.filter(organization=quota_org).update(requests=F("requests") + 1)
    output, error = reconcile("--org", quota_org.slug)
    assert error is not None and "1 difference(s)" in str(error)
    assert "DIFFERENT" in output
    assert "requests: counter 6, events 5 (+1)" in output


def test_a_tampered_event_is_reported(recorded, quota_org):
    UsageEvent.objects.filter(request_id=recorded[0].request_id).update(output_tokens=10_000)
    output, error = reconcile("--json", "--org", quota_org.slug)
    assert error is not None
    differences = json.loads(output)["organizations"][0]["differences"]
    # The quota counter and both rollups counted the event as it was stored.
    expected = recorded[0].output_tokens - 10_000
    assert {d["field"]: d["difference"] for d in differences} == {
        "tokens": expected,
        "rollup_hour_output_tokens": expected,
        "rollup_day_output_tokens": expected,
    }


def test_a_lost_event_is_reported(recorded, quota_org):
    UsageEvent.objects.filter(request_id=recorded[0].request_id).delete()
    output, error = reconcile("--org", quota_org.slug)
    assert error is not None
    assert "requests: counter 5, events 4 (+1)" in output


def test_a_reset_counter_is_compared_with_the_events_since_the_reset(recorded, quota_org, issued):
    quota_reset(quota_org, actor=Actor.for_system("tests"))
    usage_record(events=admitted(issued, 2))
    output, error = reconcile("--org", quota_org.slug)
    assert error is None, output


def test_billable_events_without_a_counter_differ_only_under_a_quota(org, issued):
    usage_record(events=[make_event(issued), make_event(issued, billable=False)])
    org.plan = Plan.objects.get(slug="enterprise")  # no quota: nothing counts its requests
    org.save()
    assert reconcile()[1] is None
    org.plan = Plan.objects.create(slug="q", name="Q", monthly_request_quota=10)
    org.save()
    output, error = reconcile()
    assert error is not None
    assert "no counter" in output and "requests: counter 0, events 1 (-1)" in output


def test_refusals_are_not_compared(recorded, quota_org, issued):
    usage_record(events=[make_event(issued, status_code=429, billable=False)])
    assert reconcile("--org", quota_org.slug)[1] is None


def test_another_month_and_bad_arguments(recorded, quota_org):
    output, error = reconcile("--month", "2020-01")
    assert error is None and "0 difference(s)" in output
    with pytest.raises(CommandError, match="No organization"):
        call_command("reconcile_usage", "--org", "nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("reconcile_usage", "--month", "2020-13", stdout=io.StringIO())


@pytest.mark.redis
def test_dead_letters_are_listed_as_differences(stream_mode, stream, recorded, quota_org, issued):
    lost = make_event(issued)
    stream.xadd(
        dead_letter_key(stream_mode.USAGE_STREAM_KEY),
        {ENTRY_FIELD: lost.to_json(), "entry_id": "1-0", "reason": "DataError: test"},
    )
    output, error = reconcile()
    assert error is not None and "1 difference(s)" in str(error)
    assert "dead-letter stream: 1 event(s) not stored" in output
    assert lost.request_id in output and "DataError: test" in output
    result = json.loads(reconcile("--json")[0])
    assert result["dead_letters"]["entries"][0]["request_id"] == lost.request_id
    assert result["stream_backlog"] == 0


def test_an_unreachable_redis_is_a_difference(recorded, settings):
    from tests.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    output, error = reconcile()
    assert error is not None
    assert "dead-letter stream: Redis unreadable" in output


@pytest.mark.redis
def test_dead_letters_of_one_organization_are_counted_past_a_page(
    stream_mode, stream, recorded, quota_org, issued, make_key, other_org, monkeypatch
):
    from metering.selectors import reconciliation

    monkeypatch.setattr(reconciliation, "DEAD_LETTERS_LISTED", 3)
    dead = dead_letter_key(stream_mode.USAGE_STREAM_KEY)
    other = make_key(other_org)
    for number in range(8):
        event = make_event(issued if number % 2 else other)
        stream.xadd(dead, {ENTRY_FIELD: event.to_json(), "reason": "test"})
    result = json.loads(reconcile("--json", "--org", quota_org.slug)[0])
    assert result["dead_letters"]["count"] == 4
    assert len(result["dead_letters"]["entries"]) == 3
    assert json.loads(reconcile("--json")[0])["dead_letters"]["count"] == 8
