"""No usage event is dead-lettered, dropped or a 500 because of what a client sent (issue 10,
item 3): hostile /v1 bodies through the production ASGI application, the Redis stream and the
drain into PostgreSQL. Each request leaves exactly one event; the dead-letter stream stays
empty. ("model": "demo-chat\\u0000" was a 404 whose event was dead-lettered forever: PostgreSQL
text cannot hold NUL.)"""

import json
import time

import httpx
import pytest

from metering import limiter
from metering.models import UsageEvent
from metering.services import usage_drain
from metering.usage.events import dead_letter_key
from tests.factories import AIModelFactory
from tests.gateway.asgi_client import AsgiTestClient
from tests.servers import production_server

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


def _send_all(post) -> list[int]:
    """Each hostile body, X-Request-ID hostile-<n>; the statuses."""
    answers = []
    for number, (body, expected) in enumerate(HOSTILE):
        status, content = post(body.encode("utf-8", "surrogatepass"), f"hostile-{number}")
        answers.append(status)
        assert status < 500, (number, content[:300])
        if expected is not None:
            assert status == expected, (number, content[:300])
    return answers


def _one_event_each_and_no_dead_letter(stream_mode, stream, answers: list[int]) -> None:
    usage_drain()
    key = stream_mode.USAGE_STREAM_KEY
    assert stream.xlen(dead_letter_key(key)) == 0
    assert stream.xlen(key) == 0
    for number, status in enumerate(answers):
        [event] = UsageEvent.objects.filter(request_id__startswith=f"hostile-{number}:")
        assert event.status_code == status
        assert "\x00" not in event.model and len(event.model) <= 200
        assert event.billable == (status == 200)
    event = UsageEvent.objects.get(request_id__startswith="hostile-0:")
    assert (event.model, event.error_code) == ("demo-chat\ufffd", "model_not_found")


def test_hostile_bodies_leave_one_event_each_and_nothing_dead_lettered(
    stream_mode, stream, make_key, org
):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = make_key(org).raw_key
    client = AsgiTestClient()

    def post(body: bytes, request_id: str) -> tuple[int, bytes]:
        response = client.post(
            CHAT,
            data=body,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
            HTTP_X_REQUEST_ID=request_id,
        )
        return response.status_code, response.content

    _one_event_each_and_no_dead_letter(stream_mode, stream, _send_all(post))


def test_hostile_bodies_through_the_production_server(stream_mode, stream, make_key, org):
    """The same through THE production command (gunicorn, uvicorn workers) over TCP."""
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = make_key(org).raw_key
    env = {
        "CELERY_BROKER_URL": stream_mode.REDIS_URL,
        "USAGE_STREAM_KEY": stream_mode.USAGE_STREAM_KEY,
    }
    with production_server(workers=1, extra_env=env) as server, httpx.Client() as client:

        def post(body: bytes, request_id: str) -> tuple[int, bytes]:
            response = client.post(
                server.url + CHAT,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {raw}",
                    "X-Request-ID": request_id,
                },
                timeout=30,
            )
            return response.status_code, response.content

        answers = _send_all(post)
        # Events are emitted after their reply: wait for the last ones before stopping.
        deadline = time.monotonic() + 10
        while stream.xlen(stream_mode.USAGE_STREAM_KEY) < len(HOSTILE):
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.05)
    _one_event_each_and_no_dead_letter(stream_mode, stream, answers)
