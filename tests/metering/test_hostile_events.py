"""No usage event is dead-lettered, dropped or a 500 because of what a client sent (issue 10,
item 3): hostile /v1 bodies through the production ASGI application, the Redis stream and the
drain into PostgreSQL. Each request leaves exactly one event; the dead-letter stream stays
empty. ("model": "demo-chat\\u0000" was a 404 whose event was dead-lettered forever: PostgreSQL
text cannot hold NUL.)"""

import json

import pytest

from metering import limiter
from metering.events import dead_letter_key
from metering.models import UsageEvent
from metering.services import usage_drain
from tests.factories import AIModelFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
HOSTILE = [
    ('{"model": "demo-chat\\u0000", "messages": [{"role": "user", "content": "Hi"}]}', 404),
    (json.dumps({"model": "\x00" * 5_000, "messages": HI}), 404),
    (json.dumps({"model": "m" * 10_000, "messages": HI}), 404),
    (json.dumps({"model": "é€😀" * 3_000, "messages": HI}, ensure_ascii=False), 404),
    (json.dumps({"model": "demo-chat\u202e\ufeff", "messages": HI}), 404),
    ('{"model": "\\ud800", "messages": []}', 400),
    ('{"model": "demo-chat", "messages": [{"role": "user", "content": "\\udfff"}]}', 400),
    (json.dumps({"model": "demo-chat", "messages": [{"role": "user", "content": "\x00"}]}), 200),
    (json.dumps({"model": "demo-chat", "messages": HI, "user": "\x00" * 10_000}), None),
    (json.dumps({"model": "demo-chat", "messages": HI, "max_tokens": 10**30}), None),
    (json.dumps({"model": "demo-chat", "messages": HI, "max_tokens": 2**63}), None),
    (json.dumps({"model": "demo-chat", "messages": HI, "max_tokens": -(2**63)}), 400),
    ('{"model": "demo-chat", "messages": [], "max_tokens": 1e400}', None),
    ('{"model": "demo-chat", "messages": [], "max_tokens": NaN}', None),
    (json.dumps({"model": "demo-chat", "messages": HI, "n": 10**30}), None),
    (json.dumps({"model": ["demo-chat\x00"], "messages": HI}), 400),
    (json.dumps({"model": {"\x00": 1}, "messages": HI}), 400),
    (json.dumps({"model": 1e308, "messages": HI}), 400),
    ("[" * 100_000, 400),
    ('{"model": "demo-chat"}\x00', 400),
]


@pytest.fixture(autouse=True)
def _fresh_limiter():
    limiter.reset_state()
    yield
    limiter.reset_state()


def test_hostile_bodies_leave_one_event_each_and_nothing_dead_lettered(
    stream_mode, stream, make_key, org
):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = make_key(org).raw_key
    client = AsgiTestClient()
    answers = []
    for number, (body, expected) in enumerate(HOSTILE):
        response = client.post(
            CHAT,
            data=body.encode("utf-8", "surrogatepass"),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
            HTTP_X_REQUEST_ID=f"hostile-{number}",
        )
        answers.append(response.status_code)
        assert response.status_code < 500, (number, response.content[:300])
        if expected is not None:
            assert response.status_code == expected, (number, response.content[:300])
    usage_drain()
    key = stream_mode.USAGE_STREAM_KEY
    assert stream.xlen(dead_letter_key(key)) == 0
    assert stream.xlen(key) == 0
    for number, status in enumerate(answers):
        [event] = UsageEvent.objects.filter(request_id__startswith=f"hostile-{number}:")
        assert event.status_code == status
        assert "\x00" not in event.model and len(event.model) <= 200
        assert event.billable == (status == 200)
    model = UsageEvent.objects.get(request_id__startswith="hostile-0:").model
    assert model == "demo-chat\ufffd"
    assert UsageEvent.objects.get(request_id__startswith="hostile-0:").error_code == (
        "model_not_found"
    )
