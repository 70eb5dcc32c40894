"""GET /v1/usage: key authentication, the usage:read scope, the summary's shape, ?month."""

import pytest
from django.test import Client

from keys.permissions import INSUFFICIENT_SCOPE
from metering.selectors import INVALID_MONTH_MESSAGE
from tests.metering.conftest import expected_june

pytestmark = pytest.mark.django_db

URL = "/v1/usage"


def get(raw_key: str | None = None, **params):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"} if raw_key else {}
    return Client().get(URL, params, **headers)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


def test_without_a_key_is_401_invalid_api_key(db):
    response = get()
    error = error_of(response, 401)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_bad_key_is_401(db):
    assert error_of(get("sk_live_nope"), 401)["code"] == "invalid_api_key"


def test_key_without_usage_read_is_403_insufficient_scope(usage_dataset):
    error = error_of(get(usage_dataset.beta.raw_key), 403)  # scopes: inference
    assert (error["type"], error["code"]) == ("permission_error", INSUFFICIENT_SCOPE)
    assert "usage:read" in error["message"]


def test_key_with_usage_read_gets_its_organizations_usage(usage_dataset):
    response = get(usage_dataset.alpha.raw_key)
    assert response.status_code == 200
    assert response.json() == expected_june(usage_dataset)


def test_admin_scope_may_read_usage(usage_dataset, make_key):
    admin = make_key(usage_dataset.org, name="admin", scopes=["admin"])
    assert get(admin.raw_key).json()["totals"]["requests"] == 4


def test_key_sees_only_its_own_organization(usage_dataset):
    body = get(usage_dataset.other.raw_key).json()
    assert body["organization"] == usage_dataset.other_org.slug
    assert body["totals"]["requests"] == 1
    assert {row["key_id"] for row in body["by_key"]} == {usage_dataset.other.api_key.key_id}


def test_shape_and_types(usage_dataset):
    body = get(usage_dataset.alpha.raw_key).json()
    assert list(body) == [
        "object",
        "organization",
        "period",
        "totals",
        "last_24h",
        "by_key",
        "by_model",
        "refused_by_code",
    ]
    for totals in (body["totals"], body["last_24h"], *body["by_key"], *body["by_model"]):
        assert isinstance(totals["requests"], int)
        assert isinstance(totals["errors"], int)
        assert isinstance(totals["input_tokens"], int)
        assert isinstance(totals["output_tokens"], int)
        assert isinstance(totals["cost"], str)
    assert set(body["by_key"][0]) == {
        "key_id",
        "name",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost",
        "errors",
        "refused",
    }
    assert set(body["by_model"][0]) == {
        "model",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost",
        "errors",
    }
    assert body["refused_by_code"] == {}


def test_month_parameter_selects_the_period(usage_dataset):
    body = get(usage_dataset.alpha.raw_key, month="2025-05").json()
    assert body["period"] == {"start": "2025-05-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"}
    assert body["totals"]["cost"] == "1.00000000"


@pytest.mark.parametrize("month", ["2025-13", "june", "2025-6", ""])
def test_bad_month_is_400_naming_the_param(usage_dataset, month):
    error = error_of(get(usage_dataset.alpha.raw_key, month=month), 400)
    assert error == {
        "type": "invalid_request_error",
        "code": "invalid_request_error",
        "message": INVALID_MONTH_MESSAGE,
        "param": "month",
    }


def test_scope_is_checked_before_the_month(usage_dataset):
    assert get(usage_dataset.beta.raw_key, month="bad").status_code == 403


def test_the_schema_describes_every_field_served(usage_dataset):
    from django.test import Client

    schema = Client().get("/api/schema/", {"format": "json"}).json()
    body = get(usage_dataset.alpha.raw_key).json()
    ok = schema["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]["application/json"]

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        return node

    usage = resolve(ok["schema"])["properties"]
    assert set(usage) == set(body)
    for name in ("totals", "last_24h"):
        assert set(resolve(usage[name])["properties"]) == set(body[name])
    assert set(resolve(usage["by_key"]["items"])["properties"]) == set(body["by_key"][0])
    assert set(resolve(usage["by_model"]["items"])["properties"]) == set(body["by_model"][0])
    assert usage["refused_by_code"]["type"] == "object"
