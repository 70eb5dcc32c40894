"""/api/schema/ describes what is served: paginated envelopes, OpenAI-shaped errors with the
statuses each operation answers, parameters with the validation they really have, and the /v1
inference endpoints (not DRF views) with their security schemes. The live fuzzing of all of it
is tests/e2e/test_schemathesis.py; these pin the pieces that schemathesis cannot judge alone
(what the schema *refuses* must be refused by the server too)."""

import copy
import json
import re

import jsonschema
import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from accounts.actors import Actor
from aibaas.gateway import validation
from aibaas.gateway.models import ModelKind
from infra.pagination import MAX_LIMIT, MAX_OFFSET
from infra.schema import ERROR_DESCRIPTIONS
from keys.services import api_key_create
from metering.selectors import MONTH_PATTERN, month_period
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _json_schema(schema: dict, name: str) -> dict:
    """A component as plain JSON Schema (OpenAPI 3.0's `nullable` spelled as a null type)."""

    def convert(node):
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: convert(value) for key, value in node.items()}
        if "$ref" in node:
            node["$ref"] = node["$ref"].replace("#/components/schemas/", "#/$defs/")
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node

    definitions = convert(copy.deepcopy(schema["components"]["schemas"]))
    return {"$defs": definitions, "$ref": f"#/$defs/{name}"}


def _operation(schema: dict, path: str, method: str) -> dict:
    return schema["paths"][path][method]


def test_the_v1_inference_endpoints_are_in_the_schema_with_the_key_schemes(schema):
    for path, method in [
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/usage", "get"),
        ("/v1/key", "get"),
    ]:
        operation = _operation(schema, path, method)
        assert operation["security"] == [{"ApiKey": []}, {"ApiKeyHeader": []}], path
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    assert schemes["jwtAuth"]["bearerFormat"] == "JWT"
    assert schemes["cookieAuth"]["in"] == "cookie"
    chat = _operation(schema, "/v1/chat/completions", "post")["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}  # streaming is documented


def test_the_docs_page_serves_the_schema_with_the_v1_paths(db):
    page = Client().get("/api/docs/")
    assert page.status_code == 200
    assert b"/api/schema/" in page.content
    assert b"/v1/chat/completions" in Client().get("/api/schema/").content


@pytest.mark.parametrize(
    ("path", "operation_id", "component"),
    [("/api/keys", "keys_list", "KeyOutput"), ("/api/audit", "audit_list", "AuditEventOutput")],
)
def test_paginated_lists_are_documented_as_the_envelope_they_return(
    schema, path, operation_id, component
):
    operation = _operation(schema, path, "get")
    assert operation["operationId"] == operation_id
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    envelope = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(envelope["properties"]) == {"count", "next", "previous", "results"}
    assert envelope["properties"]["results"]["items"]["$ref"].endswith(f"/{component}")
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
    assert parameters["offset"] == {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}


@pytest.mark.parametrize("path", ["/api/keys", "/api/audit"])
@pytest.mark.parametrize("query", [{"offset": 10**20}, {"limit": 10**30}, {"offset": -(10**20)}])
def test_huge_page_numbers_are_a_page_not_a_500(path, query):
    """Found by schemathesis: `?limit=10429744568453460300920782848` reached the database."""
    organization = MembershipFactory().organization
    issued = api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="a", scopes=["admin"]
    )
    response = Client().get(path, query, HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
    assert response.status_code == 200, response.content[:300]
    assert set(response.json()) == {"count", "next", "previous", "results"}


EXPECTED_ERRORS = {
    ("/api/auth/token", "post"): {400, 401, 429},
    ("/api/auth/token/refresh", "post"): {400, 401},
    ("/api/auth/logout", "post"): {401, 403},
    ("/api/keys", "get"): {400, 401, 403},
    ("/api/keys", "post"): {400, 401, 403},
    ("/api/keys/{ident}", "get"): {401, 403, 404},
    ("/api/keys/{ident}", "patch"): {400, 401, 403, 404},
    ("/api/keys/{ident}/revoke", "post"): {400, 401, 403, 404},
    ("/api/keys/{ident}/rotate", "post"): {400, 401, 403, 404},
    ("/api/audit", "get"): {400, 401, 403},
    ("/api/usage", "get"): {400, 401, 403},
    ("/api/usage/csv", "get"): {400, 401, 403},
    ("/api/admin/orgs", "get"): {400, 401, 403},
    ("/api/admin/orgs", "post"): {400, 401, 403},
    ("/api/admin/orgs/{slug}", "get"): {401, 403, 404},
    ("/api/admin/orgs/{slug}", "patch"): {400, 401, 403, 404, 409},
    ("/api/admin/orgs/{slug}/reset-usage", "post"): {400, 401, 403, 404, 409},
    ("/v1/key", "get"): {401, 503},
    ("/v1/usage", "get"): {400, 401, 403, 503},
    ("/v1/models", "get"): {401, 403, 429, 503},
    ("/v1/models/{model}", "get"): {401, 403, 404, 429, 503},
    ("/v1/chat/completions", "post"): {400, 401, 403, 404, 413, 415, 429, 502, 503, 504},
    ("/v1/embeddings", "post"): {400, 401, 403, 404, 413, 415, 429, 502, 503, 504},
}


def test_every_operation_documents_its_errors_in_the_openai_shape(schema):
    operations = {
        (path, method)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    }
    assert operations == set(EXPECTED_ERRORS)
    for (path, method), statuses in EXPECTED_ERRORS.items():
        responses = _operation(schema, path, method)["responses"]
        errors = {int(code) for code in responses if int(code) >= 400}
        assert errors == statuses, (path, method)
        for status in statuses:
            response = responses[str(status)]
            assert response["description"] == ERROR_DESCRIPTIONS[status]
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/RetryableError" if status == 429 else "/Error")
            if status == 429:
                assert response["headers"]["Retry-After"]["schema"]["type"] == "integer"
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"type", "code", "message", "param"}
    assert "retry_after" in schema["components"]["schemas"]["RetryableErrorDetail"]["required"]


MONTHS = [
    "2025-06",
    "1970-01",
    "9999-12",
    "1969-12",
    "2025-13",
    "2025-00",
    "2025-6",
    "25-06",
    "2025-06-01",
    "٢٠٢٥-٠٦",  # Arabic-Indic digits: \d would take them
    "",
    " 2025-06",
]


@pytest.mark.parametrize("month", MONTHS)
def test_the_month_parameter_allows_exactly_what_the_server_accepts(schema, month):
    parameter = next(
        p for p in _operation(schema, "/v1/usage", "get")["parameters"] if p["name"] == "month"
    )
    assert parameter["schema"]["pattern"] == MONTH_PATTERN
    allowed = re.search(MONTH_PATTERN, month) is not None
    try:
        month_period(month)
        accepted = True
    except Exception:
        accepted = False
    assert allowed == accepted


def test_the_last_month_datetime_can_hold_is_not_a_500():
    """Found while writing the pattern: 9999-12 ended in year 10000 (ValueError, a 500)."""
    organization = MembershipFactory().organization
    issued = api_key_create(
        organization=organization,
        actor=Actor.for_system("tests"),
        name="u",
        scopes=["usage:read"],
    )
    response = Client().get(
        "/v1/usage", {"month": "9999-12"}, HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}"
    )
    assert response.status_code == 200, response.content[:300]
    assert response.json()["period"]["start"] == "9999-12-01T00:00:00Z"


HELLO = [{"role": "user", "content": "hi"}]
CHAT_BODIES = [
    {"model": "m", "messages": HELLO},
    {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": HELLO, "stream": False, "stream_options": None},
    {"model": "m", "messages": HELLO, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": HELLO, "stream": False, "stream_options": {}},
    {"model": " \t", "messages": HELLO},
    {"model": "", "messages": HELLO},
    {"model": 3, "messages": HELLO},
    {"messages": HELLO},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user"}]},
    {"model": "m", "messages": [{"role": "user", "content": None}]},
    {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": 7}]},
    {"model": "m", "messages": HELLO, "n": 0},
    {"model": "m", "messages": HELLO, "n": validation.MAX_N},
    {"model": "m", "messages": HELLO, "n": validation.MAX_N + 1},
    {"model": "m", "messages": HELLO, "temperature": 2},
    {"model": "m", "messages": HELLO, "temperature": 2.01},
    {"model": "m", "messages": HELLO, "top_p": -0.1},
    {"model": "m", "messages": HELLO, "max_tokens": 0},
    {"model": "m", "messages": HELLO, "max_tokens": True},
    {"model": "m", "messages": HELLO, "stop": ["a", "b", "c", "d"]},
    {"model": "m", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]},
    {"model": "m", "messages": HELLO, "stop": [1]},
    {"model": "m", "messages": HELLO, "stream": "yes"},
]
EMBEDDING_BODIES = [
    {"model": "m", "input": "x"},
    {"model": "m", "input": ""},
    {"model": "m", "input": ["x", "y"]},
    {"model": "m", "input": ["x", ""]},
    {"model": "m", "input": [1, 2, 3]},
    {"model": "m", "input": [1, -2]},
    {"model": "m", "input": [validation.MAX_TOKEN_ID + 1]},
    {"model": "m", "input": [[1, 2], [3]]},
    {"model": "m", "input": [[1, 2], []]},
    {"model": "m", "input": ["x", [1, 2]]},
    {"model": "m", "input": [1, "x"]},
    {"model": "m", "input": []},
    {"model": "m", "input": ["x"] * (validation.MAX_EMBEDDING_INPUTS + 1)},
    {"model": "m", "input": "x", "encoding_format": "base64"},
    {"model": "m", "input": "x", "encoding_format": "int8"},
    {"model": "m", "input": "x", "dimensions": 0},
    {"model": "m", "input": 5},
]


def _accepted(validate, body) -> bool:
    try:
        validate(body)
        return True
    except Exception:
        return False


@pytest.mark.parametrize(
    ("component", "validate", "body"),
    [("ChatCompletionRequest", validation.validate_chat, b) for b in CHAT_BODIES]
    + [("EmbeddingRequest", validation.validate_embeddings, b) for b in EMBEDDING_BODIES],
)
def test_the_v1_request_schemas_allow_exactly_what_the_validation_accepts(
    schema, component, validate, body
):
    allowed = jsonschema.Draft202012Validator(_json_schema(schema, component)).is_valid(body)
    assert allowed == _accepted(validate, body)


def test_the_served_schema_is_valid_openapi_3(schema):
    validate_schema(schema)  # raises on anything OpenAPI 3.0 does not allow


@pytest.mark.django_db(transaction=True)
def test_real_v1_answers_match_their_components_streamed_chunks_included(schema):
    """schemathesis checks bodies, and each event of a stream, but not the JSON inside an
    event's data (OpenAPI 3.0 cannot say it): every chunk of a real stream is checked here."""
    AIModelFactory(name="demo-chat", test_mode_allowed=True)
    AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    organization = MembershipFactory().organization
    issued = api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="v", scopes=["inference"]
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.raw_key}"}
    client = AsgiTestClient()  # the one path of /v1 inference

    def post(path, body):
        return client.post(path, json.dumps(body), content_type="application/json", **auth)

    def check(component, value):
        jsonschema.Draft202012Validator(_json_schema(schema, component)).validate(value)

    check("ModelList", client.get("/v1/models", **auth).json())
    check("Model", client.get("/v1/models/demo-chat", **auth).json())
    check(
        "ChatCompletion",
        post("/v1/chat/completions", {"model": "demo-chat", "messages": HELLO}).json(),
    )
    for encoding in ("float", "base64"):
        body = {"model": "demo-embed", "input": ["a", "b"], "encoding_format": encoding}
        check("EmbeddingList", post("/v1/embeddings", body).json())
    stream = post(
        "/v1/chat/completions",
        {
            "model": "demo-chat",
            "messages": HELLO,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert stream["Content-Type"] == "text/event-stream"
    events = stream.content.decode().split("\n\n")
    data = [event.removeprefix("data: ") for event in events if event]
    assert data[-1] == "[DONE]" and len(data) > 3
    for chunk in data[:-1]:
        check("ChatCompletionChunk", json.loads(chunk))
    assert json.loads(data[-2])["usage"]["total_tokens"] > 0
    check(
        "RetryableError",
        {"error": {"type": "t", "code": "c", "message": "m", "param": None, "retry_after": 1}},
    )


@pytest.mark.parametrize("operation", [("/api/keys", "post"), ("/api/keys/{ident}", "patch")])
def test_a_key_needs_a_scope_in_the_schema_as_on_the_server(schema, operation):
    body = _operation(schema, *operation)["requestBody"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert component["properties"]["scopes"]["minItems"] == 1
    organization = MembershipFactory().organization
    issued = api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="k", scopes=["admin"]
    )
    path = operation[0].replace("{ident}", issued.api_key.key_id)
    response = getattr(Client(), operation[1])(
        path,
        json.dumps({"name": "n", "scopes": []}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "scopes"


@pytest.mark.parametrize("param", ["action", "actor"])
def test_audit_filters_with_a_nul_character_are_a_400_not_a_500(schema, param):
    """PostgreSQL cannot hold NUL in text: `?action=%00` was a 500 there."""
    parameter = next(
        p for p in _operation(schema, "/api/audit", "get")["parameters"] if p["name"] == param
    )
    assert re.search(parameter["schema"]["pattern"], "a\x00b") is None
    assert re.search(parameter["schema"]["pattern"], "key.") is not None
    organization = MembershipFactory().organization
    issued = api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="a", scopes=["admin"]
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.raw_key}"}
    response = Client().get("/api/audit", {param: "key.\x00"}, **auth)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["param"] == param
    assert Client().get("/api/audit", {param: "key."}, **auth).status_code == 200
