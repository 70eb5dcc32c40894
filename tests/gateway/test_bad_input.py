"""Hostile and odd input to /v1: always an OpenAI-shaped JSON answer, never a 500 page, and the
usage event of an authenticated request is never lost. Through the production ASGI application,
in process, with the fixtures of test_asgi.py."""

# ruff: noqa: F811  (pytest fixtures imported from test_asgi and named as arguments)

import json

import pytest

from aibaas.gateway import pipeline
from metering.models import UsageEvent
from tests.gateway.test_asgi import (  # noqa: F401 (fixtures)
    CHAT,
    EMBED,
    HELLO,
    _close_touch_writer_connection,
    _fresh_key_state,
    auth,
    client,
    error,
    key,
    make_key,
    models,
    org,
    post,
)

pytestmark = pytest.mark.django_db(transaction=True)

RATE_HEADERS = ("X-RateLimit-Limit", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (CHAT, '{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
        (CHAT, '{"model": "demo-chat", "messages": [{"role": "user", "content": "hi \\udfff"}]}'),
        (EMBED, '{"model": "demo-embed", "input": "\\uD800 alone"}'),
    ],
)
def test_a_lone_surrogate_in_the_body_is_a_400_not_a_500(key, client, path, raw):
    response = post(client, path, raw, key.raw_key)
    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"
    assert "surrogate" in error(response)["message"]


def test_a_surrogate_pair_is_a_valid_character(key, client):
    raw = '{"model": "demo-chat", "messages": [{"role": "user", "content": "fox \\ud83e\\udd8a"}]}'
    assert post(client, CHAT, raw, key.raw_key).status_code == 200


def test_a_body_nested_too_deeply_is_a_400(key, client):
    raw = '{"model": "demo-chat", "messages": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = post(client, CHAT, raw, key.raw_key)
    assert response.status_code == 400
    assert "nested too deeply" in error(response)["message"]


@pytest.mark.parametrize("model", ["", "   ", 42, None])
def test_a_request_without_a_usable_model_still_leaves_its_usage_event(key, client, model):
    response = post(client, CHAT, {"model": model, "messages": HELLO}, key.raw_key)
    assert response.status_code == 400
    assert error(response)["param"] == "model"
    event = UsageEvent.objects.get()
    assert (event.model, event.status_code) == (pipeline.UNKNOWN_MODEL, 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-embed", "input": "a fox", "dimensions": 100_000}, "dimensions"),
        ({"model": "demo-embed", "input": [1, -2, 3]}, "input"),
        ({"model": "demo-embed", "input": [[1, 2], [2**40]]}, "input[1]"),
    ],
)
def test_embedding_requests_out_of_range_are_400s_naming_the_param(key, client, body, param):
    response = post(client, EMBED, body, key.raw_key)
    assert response.status_code == 400
    assert error(response)["param"] == param


def test_shorter_embeddings_may_be_asked_for(key, client):
    body = {"model": "demo-embed", "input": "a fox", "dimensions": 16}
    response = post(client, EMBED, body, key.raw_key)
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 16


@pytest.mark.parametrize(
    "body",
    [
        {"model": "no-such-model", "messages": HELLO},
        {"model": "demo-chat", "messages": []},
        {"model": "demo-embed", "messages": HELLO},
    ],
)
def test_a_refusal_before_admission_still_carries_the_rate_limit_headers(
    make_key, models, client, body
):
    issued = make_key(requests_per_minute=7, tokens_per_minute=700)
    response = post(client, CHAT, body, issued.raw_key)
    assert response.status_code in (400, 404)
    assert response["X-RateLimit-Limit"] == "7"
    assert response["X-RateLimit-Remaining"] == "7"  # read, not counted
    assert response["x-ratelimit-limit-tokens"] == "700"


# --- GET /v1/models/{model} -------------------------------------------------------------------


def test_one_model_can_be_retrieved(key, client):
    response = client.get("/v1/models/demo-chat", **auth(key.raw_key))
    assert response.status_code == 200
    assert response.json() == {
        "id": "demo-chat",
        "object": "model",
        "created": 0,
        "owned_by": "aibaas",
    }
    assert "X-Request-ID" in response


@pytest.mark.parametrize("name", ["no-such-model", "big-chat"])
def test_a_model_the_key_may_not_use_is_not_found(make_key, models, client, name):
    test_key = make_key(test_mode=True)  # big-chat is live-only
    response = client.get(f"/v1/models/{name}", **auth(test_key.raw_key))
    assert response.status_code == 404
    assert error(response)["code"] == "model_not_found"


def test_model_names_with_a_slash_can_be_retrieved(key, client):
    from tests.factories import AIModelFactory

    AIModelFactory(name="meta-llama/Llama-3-8B")
    response = client.get("/v1/models/meta-llama/Llama-3-8B", **auth(key.raw_key))
    assert response.status_code == 200
    assert response.json()["id"] == "meta-llama/Llama-3-8B"


def test_retrieving_a_model_needs_a_key(models, client):
    response = client.get("/v1/models/demo-chat")
    assert response.status_code == 401
    assert error(response)["code"] == "invalid_api_key"


# --- unknown paths and bugs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/completions"), ("POST", "/v1/chat/completions/"), ("GET", "/v1/nothing")],
)
def test_an_unknown_v1_path_is_a_json_404(key, client, method, path):
    if method == "POST":
        response = post(client, path, {"model": "demo-chat", "prompt": "hi"}, key.raw_key)
    else:
        response = client.get(path, **auth(key.raw_key))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert error(response)["code"] == "unknown_url"
    assert path in error(response)["message"]


def test_an_unknown_dashboard_path_is_still_an_html_page(db):
    from django.test import Client

    response = Client().get("/dashboard/nothing-here/")
    assert response.status_code == 404
    assert "text/html" in response["Content-Type"]


class ExplodingProvider:
    async def chat(self, model, body):
        raise RuntimeError("a bug")


def test_a_bug_is_a_json_500_with_the_request_id_and_its_usage_event(key, client, monkeypatch):
    monkeypatch.setattr(pipeline, "provider_for", lambda spec: ExplodingProvider())
    response = post(client, CHAT, {"model": "demo-chat", "messages": HELLO}, key.raw_key)
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["error"]["type"] == "api_error"
    assert response["X-Request-ID"] in body["error"]["message"]
    assert "a bug" not in body["error"]["message"]
    assert UsageEvent.objects.get().status_code == 500


def test_an_unknown_v1_path_is_json_on_the_development_server_too(key, client, settings):
    settings.DEBUG = True  # `make run`: Django would answer with its HTML debug page
    response = post(client, "/v1/completions", {"model": "demo-chat", "prompt": "hi"}, key.raw_key)
    assert response.status_code == 404
    assert error(response)["code"] == "unknown_url"


@pytest.mark.parametrize(
    ("content", "encoding"),
    [("hi \ud800", "utf-16"), ("hi \ud800", "utf-32"), ("café", "latin-1")],
)
def test_a_body_not_in_utf8_is_a_400(key, client, content, encoding):
    raw = json.dumps(
        {"model": "demo-chat", "messages": [{"role": "user", "content": content}]},
        ensure_ascii=False,
    ).encode(encoding, errors="surrogatepass")
    response = post(client, CHAT, raw, key.raw_key)
    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            CHAT,
            {"model": "demo-embed", "messages": [{"role": "user", "content": "hi"}]},
            "The model 'demo-embed' is an embeddings model: call it with POST /v1/embeddings.",
        ),
        (
            EMBED,
            {"model": "demo-chat", "input": "hi"},
            "The model 'demo-chat' is a chat model: call it with POST /v1/chat/completions.",
        ),
    ],
)
def test_a_model_called_at_the_other_endpoint_is_told_where_to_go(key, client, path, body, message):
    response = post(client, path, json.dumps(body), key.raw_key)
    assert response.status_code == 400
    assert error(response)["message"] == message
    assert error(response)["param"] == "model"
