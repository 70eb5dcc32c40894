"""The key change log (keys/changes.py): written with every change caches must see, read by
each serving process's poller. The cross-process behaviour is tested with real processes in
tests/e2e/test_revocation_across_processes.py."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from accounts.services import membership_add, organization_set_plan
from billing.models import Plan
from keys import changes, verification
from keys.models import ApiKeyChange
from keys.services import api_key_revoke, api_key_rotate, api_key_update
from tests.keys.conftest import actor_for

pytestmark = pytest.mark.django_db

BASE_ID = 10**9  # explicit ids far above the sequence's


def logged() -> list[str]:
    return list(ApiKeyChange.objects.values_list("key_id", flat=True))


def test_every_change_that_caches_must_see_is_logged(make_key, org, owner, member_factory):
    admin = member_factory(organization=org, role=Role.ADMIN)
    key = make_key(org, actor=actor_for(admin), name="k").api_key
    other = make_key(org, name="other").api_key
    api_key_update(api_key=key, actor=actor_for(owner), name="renamed")
    assert logged() == [key.key_id]
    issued = api_key_rotate(api_key=key, actor=actor_for(owner), grace=timedelta(hours=1))
    assert logged()[-1] == key.key_id
    api_key_revoke(api_key=issued.api_key, actor=actor_for(owner))
    assert logged()[-1] == issued.api_key.key_id
    ApiKeyChange.objects.all().delete()
    membership_add(organization=org, user=admin.user, role=Role.MEMBER)
    assert logged() == [key.key_id]  # only the keys the demoted person created
    ApiKeyChange.objects.all().delete()
    organization_set_plan(organization=org, plan=Plan.objects.get(slug="pro"))
    assert sorted(logged()) == sorted([key.key_id, issued.api_key.key_id, other.key_id])


def test_rows_past_retention_are_pruned_by_the_next_write(settings):
    settings.API_KEY_CHANGE_RETENTION = 60
    ApiKeyChange.objects.create(key_id="oldoldoldold", at=timezone.now() - timedelta(minutes=2))
    ApiKeyChange.objects.create(key_id="recentrecent", at=timezone.now() - timedelta(seconds=30))
    changes.record("newnewnewnew")
    assert sorted(logged()) == ["newnewnewnew", "recentrecent"]


def add(pk: int, key_id: str) -> None:
    ApiKeyChange.objects.create(id=BASE_ID + pk, key_id=key_id)


def test_the_feed_starts_at_the_present_and_reports_each_change_once():
    add(1, "before000000")
    feed = changes.ChangeFeed()
    assert feed.poll() == []  # nothing is cached from before the process started
    add(2, "first0000000")
    add(3, "second000000")
    assert feed.poll() == ["first0000000", "second000000"]
    assert feed.poll() == []
    add(4, "third0000000")
    assert feed.poll() == ["third0000000"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_feed_finds_a_change_committed_after_a_later_one():
    """Ids are taken at insert, rows appear at commit: a transaction that took id 5 and commits
    after the one that took id 6 is still found (within LATE_COMMIT)."""
    clock = Clock()
    feed = changes.ChangeFeed(clock=clock)
    feed.poll()
    add(6, "committed1st")
    assert feed.poll() == ["committed1st"]
    clock.now += changes.LATE_COMMIT / 2
    add(5, "committed2nd")
    assert feed.poll() == ["committed2nd"]
    clock.now += changes.LATE_COMMIT * 2
    assert feed.poll() == []
    clock.now += 1
    assert feed.poll() == []
    assert feed.floor == BASE_ID + 6  # the window moved on: old rows are not read again


def test_a_poll_drops_the_changed_keys_from_this_processs_caches(make_key, org):
    issued = make_key(org, name="k")
    verification.authenticate_key(issued.raw_key)
    assert issued.api_key.key_id in verification._local
    feed = changes.ChangeFeed()
    feed.poll()
    changes.record(issued.api_key.key_id)  # as another process would
    verification.invalidate(*feed.poll())
    assert issued.api_key.key_id not in verification._local
