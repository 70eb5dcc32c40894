"""The /v1 inference routes through their one entry path, aibaas.asgi.application (the ASGI
handler of aibaas/gateway/asgi.py in front of Django), in process (tests/gateway/asgi_client.py):

- what the handler does itself: hosts, HTTPS, methods, body limits, client address, hang-ups,
  lifespan, and that every other path still reaches Django;
- the endpoints: auth, validation, demo models, streaming, the response cache and the usage
  event every authenticated request leaves.

Transactional: a cold key is verified in a worker thread (keys.verification.aauthenticate_key),
which sees committed rows only.
"""

import asyncio
import json
import re
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware
from django.test import RequestFactory
from django.urls import resolve

from accounts.actors import Actor
from aibaas.asgi import application
from aibaas.gateway import pipeline, streaming
from aibaas.gateway.models import ModelKind
from aibaas.gateway.providers.base import ProviderError
from infra.errors import method_not_allowed
from keys import touch, verification
from keys.models import ApiKey
from keys.services import api_key_create, api_key_revoke
from keys.verification import MISSING_KEY_MESSAGE
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
HELLO = [{"role": "user", "content": "Tell me about foxes."}]
BODY = {"model": "demo-chat", "messages": HELLO}


@pytest.fixture(autouse=True)
def _fresh_key_state():
    verification.clear_local()
    touch.reset()
    yield
    touch.flush()
    verification.clear_local()
    touch.reset()


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def client():
    return AsgiTestClient()


@pytest.fixture
def models(db):
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    embed = AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    live_only = AIModelFactory(name="big-chat")
    ModelPriceFactory(
        model=chat, input_per_million=Decimal("1.00"), output_per_million=Decimal("2.00")
    )
    ModelPriceFactory(model=embed, input_per_million=Decimal("0.10"), output_per_million=0)
    return {"chat": chat, "embed": embed, "live_only": live_only}


@pytest.fixture
def org(db):
    return MembershipFactory().organization


@pytest.fixture
def make_key(org):
    def make(**fields):
        fields.setdefault("name", "test key")
        return api_key_create(organization=org, actor=Actor.for_system("tests"), **fields)

    return make


@pytest.fixture
def key(make_key, models):
    return make_key()


def auth(raw: str, **extra) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}", **extra}


def post(client: AsgiTestClient, path: str, body, raw_key: str | None = None, **extra):
    headers = auth(raw_key) if raw_key else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", **headers, **extra)


def auth_headers(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


def error(response) -> dict:
    return response.json()["error"]


# --- the one entry path ------------------------------------------------------------------------


def test_other_paths_reach_django(client, key):
    assert client.get("/healthz").status_code == 200
    info = client.get("/v1/key", **auth(key.raw_key))
    assert info.status_code == 200 and info.json()["object"] == "api_key"
    assert info["X-Request-ID"]
    assert client.get("/v1/nothing-here", **auth(key.raw_key)).status_code == 404


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/demo-chat", CHAT, EMBED])
def test_django_has_no_route_of_its_own_for_the_inference_paths(path):
    """One entry path: were such a request to reach Django, it would be an unknown URL."""
    assert resolve(path).func.__name__ == "not_found"


def test_a_host_outside_allowed_hosts_is_a_json_400(client, key):
    response = client.request("GET", "/v1/models", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_host"
    assert response["X-Request-ID"]


def test_security_headers_and_request_id_on_gateway_responses(client, key):
    response = post(client, CHAT, BODY, key.raw_key)
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Content-Type"] == "application/json"
    assert int(response["Content-Length"]) == len(response.content)


def test_https_redirect_and_hsts_follow_the_security_settings(client, key, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    plain = client.request("GET", "/v1/models?x=1")
    assert plain.status_code == 301
    assert plain["Location"] == "https://127.0.0.1/v1/models?x=1"
    secure = client.get("/v1/models", HTTP_X_FORWARDED_PROTO="https", **auth(key.raw_key))
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=3600")


SECURITY_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
)


def test_the_security_headers_on_v1_are_djangos_own(client, key, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # What Django's SecurityMiddleware, built on these settings, adds to the same request.
    django = SecurityMiddleware(lambda request: HttpResponse())
    for proto in ("https", "http"):
        v1 = client.get("/v1/models", HTTP_X_FORWARDED_PROTO=proto, **auth(key.raw_key))
        expected = django(RequestFactory().get("/v1/models", HTTP_X_FORWARDED_PROTO=proto))
        assert v1.status_code == 200
        assert {n: v1.headers.get(n) for n in SECURITY_HEADERS} == {
            n: expected.headers.get(n) for n in SECURITY_HEADERS
        }
        assert v1["Cross-Origin-Opener-Policy"] == "same-origin"
        assert ("Strict-Transport-Security" in v1) is (proto == "https")


def test_the_https_redirect_follows_secure_ssl_host_and_its_exemptions(client, key, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_SSL_HOST = "secure.example"
    plain = client.request("GET", "/v1/models?x=1")
    assert plain.status_code == 301
    assert plain["Location"] == "https://secure.example/v1/models?x=1"
    settings.SECURE_REDIRECT_EXEMPT = [r"^v1/models"]
    assert client.get("/v1/models", **auth(key.raw_key)).status_code == 200


@pytest.mark.parametrize("proto", ["https", "https, http"])
def test_the_proxys_protocol_header_is_read_as_django_reads_it(client, key, settings, proto):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = client.get("/v1/models", HTTP_X_FORWARDED_PROTO=proto, **auth(key.raw_key))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", CHAT, "POST"),
        ("DELETE", CHAT, "POST"),
        ("PUT", EMBED, "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/demo-chat", "GET"),
        ("POST", "/v1/key", "GET"),  # Django's (DRF): the same 405
    ],
)
def test_a_wrong_method_is_the_same_openai_shaped_405_on_every_v1_route(
    client, key, method, path, allowed
):
    response = client.request(method, path, headers=auth_headers(key.raw_key))
    assert response.status_code == 405
    assert response.json() == method_not_allowed(allowed).as_dict()
    assert response["Allow"].split(", ")[0] == allowed
    assert response["X-Request-ID"]


def test_head_is_answered_where_get_is(client, key):
    response = client.request("HEAD", "/v1/models", headers=auth_headers(key.raw_key))
    assert response.status_code == 200


# --- authentication and permissions -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", CHAT, EMBED])
def test_missing_key_gets_401_invalid_api_key_with_www_authenticate(client, path, models):
    response = client.get(path) if path == "/v1/models" else post(client, path, {})
    assert response.status_code == 401
    assert error(response) == {
        "type": "authentication_error",
        "code": "invalid_api_key",
        "message": MISSING_KEY_MESSAGE,
        "param": None,
    }
    assert response["WWW-Authenticate"] == 'Bearer realm="aibaas"'
    assert UsageEvent.objects.count() == 0  # not authenticated: no usage event


def test_bad_key_gets_401_invalid_api_key(client, models):
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, "sk_live_nope")
    assert response.status_code == 401
    assert error(response)["code"] == "invalid_api_key"
    assert response["WWW-Authenticate"] == 'Bearer realm="aibaas"'


def test_revoked_key_gets_401_key_revoked(client, key):
    api_key_revoke(api_key=key.api_key, actor=Actor.for_system("tests"), reason="test")
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, key.raw_key)
    assert response.status_code == 401
    assert error(response)["code"] == "key_revoked"


def test_key_without_inference_scope_gets_403_insufficient_scope(client, make_key, models):
    issued = make_key(scopes=["usage:read"])
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, issued.raw_key)
    assert response.status_code == 403
    assert error(response)["code"] == "insufficient_scope"
    assert client.get("/v1/models", **auth(issued.raw_key)).status_code == 403
    event = UsageEvent.objects.get()
    assert (event.status_code, event.input_tokens, event.cost) == (403, 0, 0)


def test_unknown_model_gets_404_model_not_found(client, key):
    response = post(client, CHAT, {"model": "no-such-model", "messages": HELLO}, key.raw_key)
    assert response.status_code == 404
    assert error(response)["code"] == "model_not_found"
    assert error(response)["param"] == "model"
    event = UsageEvent.objects.get()
    assert (event.model, event.status_code) == ("no-such-model", 404)


def test_disabled_model_gets_404(client, key, models):
    models["chat"].enabled = False
    models["chat"].save()
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, key.raw_key)
    assert response.status_code == 404


def test_model_outside_the_key_allow_list_gets_403_model_not_allowed(client, make_key, models):
    issued = make_key(models=["demo-embed"])
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, issued.raw_key)
    assert response.status_code == 403
    assert error(response)["code"] == "model_not_allowed"
    listed = client.get("/v1/models", **auth(issued.raw_key)).json()
    assert [m["id"] for m in listed["data"]] == ["demo-embed"]


def test_test_mode_key_reaches_demo_models_only(client, make_key, models):
    issued = make_key(test_mode=True)
    response = post(client, CHAT, {"model": "big-chat", "messages": HELLO}, issued.raw_key)
    assert response.status_code == 403
    assert error(response)["code"] == "model_not_allowed"
    assert "Test-mode keys" in error(response)["message"]
    ok = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, issued.raw_key)
    assert ok.status_code == 200
    # never billed
    assert UsageEvent.objects.get(status_code=200).cost == 0


def test_chat_request_to_an_embeddings_model_is_a_400_on_model(client, key):
    response = post(client, CHAT, {"model": "demo-embed", "messages": HELLO}, key.raw_key)
    assert response.status_code == 400
    assert error(response)["param"] == "model"


# --- bodies -----------------------------------------------------------------------------------


def test_body_over_the_limit_gets_413(client, key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "x" * 2000}]}
    response = post(client, CHAT, body, key.raw_key)
    assert response.status_code == 413
    assert error(response)["code"] == "request_too_large"
    assert error(response)["type"] == "invalid_request_error"


def test_non_json_body_gets_415(client, key):
    response = client.post(
        CHAT, data="model=demo-chat", content_type="text/plain", **auth(key.raw_key)
    )
    assert response.status_code == 415


def test_a_compressed_body_gets_415_naming_its_content_encoding(client, key):
    # Read as plain JSON it would be "not valid UTF-8 JSON", which points the client elsewhere.
    import gzip
    import json

    body = gzip.compress(json.dumps({"model": "demo-chat", "messages": HELLO}).encode())
    response = client.post(
        CHAT,
        data=body,
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
        **auth(key.raw_key),
    )
    assert response.status_code == 415
    assert error(response)["code"] == "unsupported_media_type"
    assert "Content-Encoding 'gzip' is not supported" in error(response)["message"]
    plain = client.post(
        CHAT,
        data=json.dumps({"model": "demo-chat", "messages": HELLO}),
        content_type="application/json",
        HTTP_CONTENT_ENCODING="identity",
        **auth(key.raw_key),
    )
    assert plain.status_code == 200


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": HELLO}, "model"),
        ({"model": 7, "messages": HELLO}, "model"),
        ({"model": "demo-chat"}, "messages"),
        ({"model": "demo-chat", "messages": []}, "messages"),
        ({"model": "demo-chat", "messages": ["hi"]}, "messages[0]"),
        (
            {"model": "demo-chat", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "demo-chat", "messages": [*HELLO, {"role": "user"}]}, "messages[1].content"),
        (
            {"model": "demo-chat", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        ({"model": "demo-chat", "messages": HELLO, "stream": "yes"}, "stream"),
        (
            {
                "model": "demo-chat",
                "messages": HELLO,
                "stream": True,
                "stream_options": {"include_usage": 1},
            },
            "stream_options.include_usage",
        ),
        ({"model": "demo-chat", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        (
            {"model": "demo-chat", "messages": HELLO, "max_completion_tokens": 1.5},
            "max_completion_tokens",
        ),
        ({"model": "demo-chat", "messages": HELLO, "temperature": 2.5}, "temperature"),
        ({"model": "demo-chat", "messages": HELLO, "top_p": -0.1}, "top_p"),
        ({"model": "demo-chat", "messages": HELLO, "n": 0}, "n"),
        ({"model": "demo-chat", "messages": HELLO, "n": 129}, "n"),
        ({"model": "demo-chat", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "demo-chat", "messages": HELLO, "stop": 3}, "stop"),
    ],
)
def test_bad_chat_body_gets_400_naming_the_param(client, key, body, param):
    response = post(client, CHAT, body, key.raw_key)
    assert response.status_code == 400, response.content
    assert error(response)["type"] == "invalid_request_error"
    assert error(response)["param"] == param


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "demo-embed"}, "input"),
        ({"model": "demo-embed", "input": ""}, "input"),
        ({"model": "demo-embed", "input": []}, "input"),
        ({"model": "demo-embed", "input": ["ok", 3.5]}, "input[1]"),
        ({"model": "demo-embed", "input": ["ok", []]}, "input[1]"),
        ({"model": "demo-embed", "input": ["x"] * 2049}, "input"),
        ({"model": "demo-embed", "input": "hi", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "demo-embed", "input": "hi", "dimensions": 0}, "dimensions"),
        ({"model": "demo-chat", "input": "hi"}, "model"),
    ],
)
def test_bad_embeddings_body_gets_400_naming_the_param(client, key, body, param):
    response = post(client, EMBED, body, key.raw_key)
    assert response.status_code == 400, response.content
    assert error(response)["param"] == param


def test_broken_json_gets_400(client, key):
    response = post(client, CHAT, "{not json", key.raw_key)
    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"


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


def test_a_chunked_body_over_the_limit_is_413(key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    parts = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 100
    sent, _ = _call(_scope(key.raw_key), parts, then_wait=5)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert UsageEvent.objects.get().status_code == 413


# --- X-Request-ID -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/v1/key", "/v1/usage", CHAT])
def test_every_v1_response_has_a_request_id(client, key, path):
    for headers in ({}, auth(key.raw_key)):
        response = client.get(path, **headers)
        assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_a_valid_client_request_id_is_echoed_and_a_bad_one_replaced(client, key):
    body = {"model": "demo-chat", "messages": HELLO}
    sent = post(client, CHAT, body, key.raw_key, HTTP_X_REQUEST_ID="client-req.42")
    assert sent["X-Request-ID"] == "client-req.42"
    bad = post(client, CHAT, body, key.raw_key, HTTP_X_REQUEST_ID="no spaces/allowed")
    assert re.fullmatch(r"[0-9a-f]{32}", bad["X-Request-ID"])
    ids = set(UsageEvent.objects.values_list("request_id", flat=True))
    assert bad["X-Request-ID"] in ids
    # A client-chosen id may repeat: the event's id keeps it as a prefix and stays unique.
    assert any(i.startswith("client-req.42:") for i in ids)


# --- client address ---------------------------------------------------------------------------


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
    client, key, settings, proxies, forwarded_for, expected
):
    settings.CLIENT_IP_PROXIES = proxies
    post(client, CHAT, BODY, key.raw_key, HTTP_X_FORWARDED_FOR=forwarded_for)
    assert UsageEvent.objects.get().client_ip == expected


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected"),
    [
        ([], "203.0.113.7", "127.0.0.1"),
        (["127.0.0.1/32"], "198.51.100.66, 203.0.113.7", "203.0.113.7"),
    ],
)
def test_djangos_v1_routes_read_the_client_address_by_the_same_rule(
    client, key, settings, proxies, forwarded_for, expected
):
    """GET /v1/key is DRF's (ApiKeyAuthentication records the key's last use and address)."""
    settings.CLIENT_IP_PROXIES = proxies
    response = client.get("/v1/key", HTTP_X_FORWARDED_FOR=forwarded_for, **auth(key.raw_key))
    assert response.status_code == 200
    touch.flush()
    assert ApiKey.objects.get(pk=key.api_key.pk).last_used_ip == expected


# --- demo models ------------------------------------------------------------------------------


def test_models_list_has_openai_shape(client, key):
    response = client.get("/v1/models", **auth(key.raw_key))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["big-chat", "demo-chat", "demo-embed"]
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}
    assert body["data"][0]["object"] == "model"


def test_chat_non_stream_answers_and_records_exact_usage_and_cost(client, key):
    response = post(
        client, CHAT, {"model": "demo-chat", "messages": HELLO, "extra_field": 1}, key.raw_key
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "demo-chat"
    assert "fox" in body["choices"][0]["message"]["content"]
    usage = body["usage"]
    event = UsageEvent.objects.get()
    assert event.request_id == response["X-Request-ID"]
    assert (event.endpoint, event.status_code, event.model) == (
        "chat.completions",
        200,
        "demo-chat",
    )
    assert (event.input_tokens, event.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    expected = (
        Decimal(usage["prompt_tokens"]) * 1 + Decimal(usage["completion_tokens"]) * 2
    ) / 10**6
    assert event.cost == expected
    assert event.api_key_id == key.api_key.pk
    assert event.client_ip == "127.0.0.1"
    assert not event.cached and not event.estimated


def _events(chunks: list[bytes]) -> list[str]:
    text = b"".join(chunks).decode()
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def test_chat_stream_is_sse_ending_in_done_with_a_usage_chunk(key, client):
    body = {
        "model": "demo-chat",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = post(client, CHAT, body, key.raw_key)
    headers, chunks = response.headers, response.chunks
    assert response.status_code == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
    events = _events(chunks)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    content = "".join(c["delta"].get("content", "") for p in payloads for c in p["choices"])
    assert "fox" in content
    usage = payloads[-1]["usage"]
    assert payloads[-1]["choices"] == []
    event = UsageEvent.objects.get()
    assert event.request_id == headers["X-Request-ID"]
    assert (event.status_code, event.input_tokens, event.output_tokens) == (
        200,
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_embeddings_answers_and_records_usage(client, key):
    response = post(
        client, EMBED, {"model": "demo-embed", "input": ["a fox", "a dog"]}, key.raw_key
    )
    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    event = UsageEvent.objects.get()
    assert event.endpoint == "embeddings"
    assert event.input_tokens == body["usage"]["prompt_tokens"]
    assert event.cost == Decimal(body["usage"]["prompt_tokens"]) * Decimal("0.10") / 10**6


def test_embeddings_base64_and_dimensions(client, key):
    response = post(
        client,
        EMBED,
        {"model": "demo-embed", "input": "hi", "encoding_format": "base64", "dimensions": 8},
        key.raw_key,
    )
    assert response.status_code == 200
    assert isinstance(response.json()["data"][0]["embedding"], str)


# --- streams and hang-ups ----------------------------------------------------------------------


def test_streams_pass_through_the_asgi_handler_chunk_by_chunk(key):
    payload = json.dumps(dict(BODY, stream=True)).encode()
    message = {"type": "http.request", "body": payload, "more_body": False}
    sent, _ = _call(_scope(key.raw_key, length=len(payload)), [message], then_wait=10)
    start, *bodies = sent
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    # One ASGI message per SSE event as it is produced, not one buffered body.
    assert len(bodies) > 3
    assert all(b["body"].startswith(b"data: ") for b in bodies[:-1])
    assert bodies[-2]["body"] == b"data: [DONE]\n\n"
    assert bodies[-1] == {"type": "http.response.body", "body": b""}
    assert UsageEvent.objects.get().status_code == 200


def test_a_client_hanging_up_while_a_stream_starts_still_leaves_its_usage_event(key):
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

        await asyncio.wait_for(
            application(_scope(key.raw_key, length=len(payload)), receive, send), 10
        )
        await streaming.drain_background()
        return sent

    sent = async_to_sync(run)()
    assert all(m["type"] == "http.response.start" for m in sent)  # no chunk went out
    assert UsageEvent.objects.get().status_code == 499


class HangingProvider:
    cancelled = False

    async def chat(self, spec, body):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            HangingProvider.cancelled = True
            raise


def test_a_client_hanging_up_cancels_the_call_and_records_499(key, monkeypatch):
    monkeypatch.setattr(pipeline, "provider_for", lambda spec: HangingProvider())
    payload = json.dumps(BODY).encode()
    message = {"type": "http.request", "body": payload, "more_body": False}
    sent, _ = _call(_scope(key.raw_key, length=len(payload)), [message], then_wait=0.2)
    assert sent == []  # nothing was sent to a client that left
    assert HangingProvider.cancelled
    assert UsageEvent.objects.get().status_code == 499


# --- response cache ---------------------------------------------------------------------------


def test_response_cache_serves_identical_deterministic_requests(client, key, models, make_key):
    models["chat"].response_cache_ttl = 60
    models["chat"].save()
    body = {"model": "demo-chat", "messages": HELLO, "temperature": 0}
    first = post(client, CHAT, body, key.raw_key)
    second = post(client, CHAT, body, key.raw_key)
    assert first["X-Cache"] == "MISS"
    assert second["X-Cache"] == "HIT"
    assert first.json() == second.json()
    hit = UsageEvent.objects.get(request_id=second["X-Request-ID"])
    assert hit.cached and hit.input_tokens == first.json()["usage"]["prompt_tokens"]
    assert hit.cost > 0
    assert hit.upstream_latency_ms is None
    assert not UsageEvent.objects.get(request_id=first["X-Request-ID"]).cached
    # Not cacheable: sampling, streaming; no X-Cache header at all.
    warm = post(client, CHAT, {**body, "temperature": 0.7}, key.raw_key)
    assert "X-Cache" not in warm
    # Another organization never sees this organization's entries.
    other = api_key_create(
        organization=MembershipFactory().organization, actor=Actor.for_system("t"), name="o"
    )
    assert post(client, CHAT, body, other.raw_key)["X-Cache"] == "MISS"


def test_response_cache_is_off_by_default(client, key):
    body = {"model": "demo-chat", "messages": HELLO, "temperature": 0}
    assert "X-Cache" not in post(client, CHAT, body, key.raw_key)


def test_usage_api_totals_equal_the_sum_of_reported_usage(client, make_key, models):
    issued = make_key(scopes=["inference", "usage:read"])
    prompt = completion = 0
    for i in range(4):
        body = {"model": "demo-chat", "messages": [{"role": "user", "content": f"topic {i}"}]}
        usage = post(client, CHAT, body, issued.raw_key).json()["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    totals = client.get("/v1/usage", **auth(issued.raw_key)).json()["totals"]
    assert totals["requests"] == 4
    assert (totals["input_tokens"], totals["output_tokens"]) == (prompt, completion)
    assert Decimal(totals["cost"]) == (Decimal(prompt) + 2 * Decimal(completion)) / 10**6


# --- provider failures on streams -------------------------------------------------------------


class BreakingProvider:
    """A provider whose stream fails after `good` chunks (a model server dying mid-answer)."""

    def __init__(self, good: int) -> None:
        self.good = good

    async def chat_stream(self, model, body, usage):
        usage.usage.input_tokens = 5
        for _ in range(self.good):
            usage.usage.output_tokens += 1
            yield b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        raise ProviderError("upstream_error", "The model server broke the stream.", 502)


@pytest.fixture
def breaking(monkeypatch):
    def install(good: int) -> None:
        monkeypatch.setattr(pipeline, "provider_for", lambda spec: BreakingProvider(good))

    return install


def test_stream_failing_before_its_first_chunk_is_a_json_502(key, breaking, client):
    breaking(0)
    response = post(client, CHAT, dict(BODY, stream=True), key.raw_key)
    headers, chunks = response.headers, response.chunks
    assert response.status_code == 502
    assert headers["Content-Type"] == "application/json"
    body = json.loads(b"".join(chunks))
    assert body["error"]["code"] == "upstream_error"
    assert "Traceback" not in b"".join(chunks).decode()
    assert UsageEvent.objects.get().status_code == 502


def test_stream_failing_mid_way_ends_with_one_error_event(key, breaking, client):
    breaking(2)
    response = post(client, CHAT, dict(BODY, stream=True), key.raw_key)
    chunks = response.chunks
    assert response.status_code == 200
    events = _events(chunks)
    assert len(events) == 3 and "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    event = UsageEvent.objects.get()
    assert (event.status_code, event.input_tokens, event.output_tokens) == (502, 5, 2)


# --- lifespan ---------------------------------------------------------------------------------


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
