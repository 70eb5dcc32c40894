"""aibaas.asgi.application: the lean /v1 handler in front of Django (aibaas/gateway/asgi.py).

What the handler does itself (hosts, HTTPS, body limits, client address, hang-ups, lifespan)
and that everything else still reaches Django. The endpoints' behaviour is tested on both paths
in test_views.py.
"""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync

from accounts.actors import Actor
from aibaas.asgi import application
from aibaas.gateway import pipeline, streaming
from keys import touch, verification
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def _fresh_key_state():
    verification.clear_local()
    touch.reset()
    yield
    touch.flush()
    verification.clear_local()
    touch.reset()


@pytest.fixture
def raw_key(db):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    org = MembershipFactory().organization
    return api_key_create(organization=org, actor=Actor.for_system("tests"), name="k").raw_key


@pytest.fixture
def client():
    return AsgiTestClient()


def auth(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_host_outside_allowed_hosts_is_a_json_400(client, raw_key):
    response = client.request("GET", "/v1/models", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_host"
    assert response["X-Request-ID"]


def test_other_paths_reach_django(client, raw_key):
    assert client.get("/healthz").status_code == 200
    key = client.get("/v1/key", **auth(raw_key))
    assert key.status_code == 200 and key.json()["object"] == "api_key"
    assert key["X-Request-ID"]
    assert client.get("/v1/nothing-here", **auth(raw_key)).status_code == 404


def test_security_headers_and_request_id_on_gateway_responses(client, raw_key):
    response = client.post(CHAT, BODY, content_type="application/json", **auth(raw_key))
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Content-Type"] == "application/json"
    assert int(response["Content-Length"]) == len(response.content)


def _scope(raw_key: str, *, length: int | None = None) -> dict:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {raw_key}".encode()),
    ]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "query_string": b"",
        "scheme": "http",
        "client": ("127.0.0.1", 5000),
        "headers": headers,
    }


def _call(scope: dict, messages: list[dict], *, then_wait: float = 0.0) -> list[dict]:
    """Run the application on scripted request messages; after them the client waits
    `then_wait` seconds and hangs up. Returns what the application sent."""

    async def run():
        pending = list(messages)
        read = []

        async def receive():
            if pending:
                read.append(1)
                return pending.pop(0)
            await asyncio.sleep(then_wait)
            return {"type": "http.disconnect"}

        sent = []

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(application(scope, receive, send), timeout=10)
        await streaming.drain_background()
        return sent, len(read)

    return async_to_sync(run)()


def test_a_chunked_body_over_the_limit_is_413(raw_key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    parts = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 100
    sent, _ = _call(_scope(raw_key), parts, then_wait=5)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert UsageEvent.objects.get().status_code == 413


def test_a_declared_length_over_the_limit_is_413(client, raw_key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    big = dict(BODY, messages=[{"role": "user", "content": "x" * 5000}])
    response = client.post(CHAT, big, content_type="application/json", **auth(raw_key))
    assert response.status_code == 413


def test_https_redirect_and_hsts_follow_the_security_settings(client, raw_key, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    plain = client.request("GET", "/v1/models?x=1")
    assert plain.status_code == 301
    assert plain["Location"] == "https://127.0.0.1/v1/models?x=1"
    secure = client.get("/v1/models", HTTP_X_FORWARDED_PROTO="https", **auth(raw_key))
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=3600")


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected"),
    [
        # Nobody trusted (the default): the header is the client's own text.
        ([], "203.0.113.7", "127.0.0.1"),
        # The peer (127.0.0.1) is our proxy: it appended what it saw; the left is the client's.
        (["127.0.0.1/32"], "198.51.100.66, 203.0.113.7", "203.0.113.7"),
        # Two proxies of ours: read from the right past every hop that is one of them.
        (["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.66, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
        (["127.0.0.0/8", "10.0.0.0/8"], "10.0.0.2, 10.0.0.1", "10.0.0.2"),  # all ours: leftmost
        (["127.0.0.1/32"], "not-an-address", "127.0.0.1"),  # garbage: the socket peer
        (["127.0.0.1/32"], " 2001:DB8::0:1 ", "2001:db8::1"),  # canonical form
        (["192.0.2.0/24"], "203.0.113.7", "127.0.0.1"),  # the peer is not a proxy of ours
    ],
)
def test_client_address_comes_from_x_forwarded_for_only_through_our_proxies(
    client, raw_key, settings, proxies, forwarded_for, expected
):
    settings.CLIENT_IP_PROXIES = proxies
    client.post(
        CHAT,
        BODY,
        content_type="application/json",
        HTTP_X_FORWARDED_FOR=forwarded_for,
        **auth(raw_key),
    )
    assert UsageEvent.objects.get().client_ip == expected


def test_lifespan_startup_and_shutdown_complete():
    async def run():
        inbox = asyncio.Queue()
        for message in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
            inbox.put_nowait(message)
        sent = []

        async def send(message):
            sent.append(message["type"])

        await application({"type": "lifespan"}, inbox.get, send)
        return sent

    assert async_to_sync(run)() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


class HangingProvider:
    cancelled = False

    async def chat(self, spec, body):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            HangingProvider.cancelled = True
            raise


def test_a_client_hanging_up_cancels_the_call_and_records_499(raw_key, monkeypatch):
    monkeypatch.setattr(pipeline, "provider_for", lambda spec: HangingProvider())
    payload = json.dumps(BODY).encode()
    message = {"type": "http.request", "body": payload, "more_body": False}
    sent, _ = _call(_scope(raw_key, length=len(payload)), [message], then_wait=0.2)
    assert sent == []  # nothing was sent to a client that left
    assert HangingProvider.cancelled
    assert UsageEvent.objects.get().status_code == 499


def test_the_openai_error_shape_for_wrong_methods(client):
    response = client.request("DELETE", CHAT)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_streams_pass_through_the_asgi_handler_chunk_by_chunk(raw_key):
    payload = json.dumps(dict(BODY, stream=True)).encode()
    message = {"type": "http.request", "body": payload, "more_body": False}
    sent, _ = _call(_scope(raw_key, length=len(payload)), [message], then_wait=10)
    start, *bodies = sent
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    # One ASGI message per SSE event as it is produced, not one buffered body.
    assert len(bodies) > 3
    assert all(b["body"].startswith(b"data: ") for b in bodies[:-1])
    assert bodies[-2]["body"] == b"data: [DONE]\n\n"
    assert bodies[-1] == {"type": "http.response.body", "body": b""}
    assert UsageEvent.objects.get().status_code == 200


def test_a_client_hanging_up_while_a_stream_starts_still_leaves_its_usage_event(raw_key):
    """The response start waits on a slow reader (flow control) and the client leaves: the
    stream is closed before its first chunk was asked for, and still records a 499."""
    payload = json.dumps(dict(BODY, stream=True)).encode()

    async def run():
        pending = [{"type": "http.request", "body": payload, "more_body": False}]
        hung_up = asyncio.Event()

        async def receive():
            if pending:
                return pending.pop(0)
            await hung_up.wait()
            return {"type": "http.disconnect"}

        sent = []

        async def send(message):
            if message["type"] == "http.response.start":
                hung_up.set()
                await asyncio.sleep(0.05)  # the socket's buffer is full: send waits
            sent.append(message)

        await asyncio.wait_for(application(_scope(raw_key, length=len(payload)), receive, send), 10)
        await streaming.drain_background()
        return sent

    sent = async_to_sync(run)()
    assert all(m["type"] == "http.response.start" for m in sent)  # no chunk went out
    assert UsageEvent.objects.get().status_code == 499
