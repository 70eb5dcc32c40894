"""last_used_at / last_used_ip: written off the request path, at most once per interval.

The writer is a background thread with its own database connection, so these tests commit
for real (transactional_db) and wait for it with keys.touch.flush().
"""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from keys import touch, verification
from keys.models import ApiKey
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True)


def use(raw: str, ip: str) -> None:
    response = Client().get("/v1/key", REMOTE_ADDR=ip, **bearer(raw))
    assert response.status_code == 200


def last_use(issued) -> tuple:
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    return key.last_used_at, key.last_used_ip


def test_a_new_key_was_never_used(issued):
    assert last_use(issued) == (None, None)


def test_using_a_key_records_when_and_from_where(issued):
    before = timezone.now()
    use(issued.raw_key, "203.0.113.10")
    touch.flush()
    used_at, ip = last_use(issued)
    assert ip == "203.0.113.10"
    assert before <= used_at <= timezone.now()


def test_a_second_use_within_the_interval_writes_nothing(issued):
    use(issued.raw_key, "203.0.113.10")
    touch.flush()
    first = last_use(issued)
    use(issued.raw_key, "198.51.100.20")
    touch.flush()
    assert last_use(issued) == first


def test_another_process_within_the_interval_writes_nothing_either(issued):
    use(issued.raw_key, "203.0.113.10")
    touch.flush()
    first = last_use(issued)
    touch.reset()  # a process that has not seen this key yet: only the shared cache knows
    use(issued.raw_key, "198.51.100.20")
    touch.flush()
    assert last_use(issued) == first


def test_a_use_after_the_interval_writes_again(issued, settings, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    use(issued.raw_key, "203.0.113.10")
    touch.flush()
    time_machine.move_to(now + timedelta(seconds=settings.API_KEY_TOUCH_INTERVAL + 1), tick=False)
    # Redis expires the de-duplication entry on its own clock, which time-machine cannot move.
    cache.delete(touch._touch_cache_key(issued.api_key.key_id))
    use(issued.raw_key, "198.51.100.20")
    touch.flush()
    used_at, ip = last_use(issued)
    assert ip == "198.51.100.20"
    assert used_at == now + timedelta(seconds=settings.API_KEY_TOUCH_INTERVAL + 1)


def test_refused_requests_record_nothing(issued):
    api_key = ApiKey.objects.get(pk=issued.api_key.pk)
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    verification.invalidate(api_key.key_id)
    response = Client().get("/v1/key", **bearer(issued.raw_key))
    assert response.status_code == 401
    touch.flush()
    assert last_use(issued) == (None, None)


def test_each_key_is_recorded_separately(make_key, org):
    first, second = make_key(org, name="one"), make_key(org, name="two")
    use(first.raw_key, "203.0.113.1")
    use(second.raw_key, "203.0.113.2")
    touch.flush()
    assert last_use(first)[1] == "203.0.113.1"
    assert last_use(second)[1] == "203.0.113.2"
