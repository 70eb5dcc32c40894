"""Keys in a URL's query string are refused (issue 10, item 5): 401 key_in_query naming the
headers to use, with the key's challenge (WWW-Authenticate), on the /v1 ASGI handler and on
everything Django serves under /api and /v1: one rule, keys/middleware.py key_in_query_refusal."""

from urllib.parse import quote

import pytest
from django.test import Client

from accounts.actors import Actor
from keys.format import key_in_query
from keys.services import api_key_create
from keys.verification import KEY_IN_QUERY, KEY_IN_QUERY_MESSAGE
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import AsgiTestClient

RAW = "sk_live_9WxUcnycxGms_fU1FfZjmjaM2HBIylF9TF0EhsUirokifFt0utXRdb7x0NsRa7"
CHAT_BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "query",
    [
        f"api_key={RAW}",
        f"key={RAW}",
        f"KEY={RAW}",
        f"apikey={RAW}",
        "api_key=anything",
        "api-key=",
        "key=not-a-key-id",
        f"q={RAW}",
        f"q={quote(RAW, safe='')}",
        f"q=SK_TEST_{RAW[8:]}",
        "sk_live_abc=1",
        f"a=1&b=2&c={RAW[:30]}",
    ],
)
def test_a_key_in_the_query_is_detected(query):
    assert key_in_query(query)


@pytest.mark.parametrize(
    "query",
    ["", "month=2026-12", "key=9WxUcnycxGms", "key=42", "key=", "status=active&limit=5"],
)
def test_queries_without_a_key_pass(query):
    assert not key_in_query(query)


def assert_key_in_query(response) -> None:
    assert response.status_code == 401, response.content
    error = response.json()["error"]
    assert error["code"] == KEY_IN_QUERY
    assert error["message"] == KEY_IN_QUERY_MESSAGE
    assert "Authorization: Bearer" in error["message"]
    assert "X-API-Key" in error["message"]
    assert RAW not in response.content.decode()
    assert response["WWW-Authenticate"] == 'Bearer realm="aibaas"'


@pytest.fixture
def raw_key(db):
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    org = MembershipFactory().organization
    return api_key_create(organization=org, actor=Actor.for_system("tests"), name="k").raw_key


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["api_key", "key"])
def test_v1_asgi_handler_refuses_a_key_in_the_query(raw_key, name):
    client = AsgiTestClient()
    # Alone, and even next to a valid header: a key that was in a URL is refused.
    assert_key_in_query(client.get(f"/v1/models?{name}={raw_key}"))
    assert_key_in_query(
        client.post(
            f"/v1/chat/completions?{name}={raw_key}",
            CHAT_BODY,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        )
    )
    assert_key_in_query(client.get(f"/v1/key?{name}={raw_key}"))  # Django, behind the handler
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw_key}").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/keys?api_key={raw}",
        "/api/keys?key={raw}",
        "/api/audit?actor={raw}",
        "/api/keys/1?key={raw}",
        "/v1/key?key={raw}",
        "/v1/usage?month=2026-12&api_key={raw}",
    ],
)
def test_django_refuses_a_key_in_the_query_on_api_and_v1(raw_key, path):
    client = Client()
    assert_key_in_query(
        client.get(path.format(raw=raw_key), HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    )
    assert_key_in_query(client.post(path.format(raw=raw_key), {}, content_type="application/json"))


@pytest.mark.django_db
def test_django_answers_as_usual_without_a_key_in_the_query(raw_key):
    response = Client().get("/v1/key?key=9WxUcnycxGms", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 200, response.content
