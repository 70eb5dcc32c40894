"""GET /api/usage and /api/usage/csv: who may read them, the query, its errors, CSV = JSON."""

import csv
import io

import pytest
from django.test import Client

from accounts.models import Membership, Role
from metering.rollups.apis import OUT_OF_RANGE, START_AFTER_END
from tests.factories import MembershipFactory
from tests.metering.conftest import expected_june

pytestmark = pytest.mark.django_db

JUNE = {"start": "2025-06-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"}


def _session(organization, role=Role.VIEWER) -> Client:
    membership = MembershipFactory(organization=organization, role=role)
    client = Client()
    client.force_login(membership.user)
    return client


def _bearer(issued) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {issued.raw_key}"}


def test_a_viewer_session_reads_the_month_with_the_v1_usage_totals(usage_dataset):
    client = _session(usage_dataset.org)
    body = client.get("/api/usage", JUNE).json()
    june = expected_june(usage_dataset)
    assert body["object"] == "usage.series"
    assert body["granularity"] == "day"
    assert len(body["buckets"]) == 30
    for name in ("requests", "input_tokens", "output_tokens", "cost"):
        assert body["totals"][name] == june["totals"][name]


def test_a_usage_read_key_reads_and_an_inference_key_is_refused(usage_dataset):
    client = Client()
    ok = client.get("/api/usage", JUNE, **_bearer(usage_dataset.alpha))
    assert ok.status_code == 200
    assert ok.json()["organization"] == usage_dataset.org.slug
    refused = client.get("/api/usage", JUNE, **_bearer(usage_dataset.beta))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"


def test_anonymous_is_401():
    assert Client().get("/api/usage").status_code == 401


def test_group_by_and_filters(usage_dataset):
    client = _session(usage_dataset.org)
    by_model = client.get("/api/usage", {**JUNE, "group_by": "model"}).json()
    assert [(g["group"], g["requests"]) for g in by_model["groups"]] == [
        ("demo-chat", 3),
        ("demo-embed", 1),
    ]
    alpha = usage_dataset.alpha.api_key.key_id
    filtered = client.get("/api/usage", {**JUNE, "key": [alpha], "group_by": "key"}).json()
    assert [(g["group"], g["name"]) for g in filtered["groups"]] == [(alpha, "alpha")]
    assert filtered["totals"]["requests"] == 2
    hourly = client.get(
        "/api/usage",
        {
            "start": "2025-06-14T12:00:00Z",
            "end": "2025-06-15T12:00:00Z",
            "granularity": "hour",
            "model": "demo-chat",
        },
    ).json()
    assert len(hourly["buckets"]) == 24
    assert hourly["totals"]["requests"] == 2


def test_another_organizations_keys_are_not_a_way_in(usage_dataset):
    client = _session(usage_dataset.org)
    other = usage_dataset.other.api_key.key_id
    body = client.get("/api/usage", {**JUNE, "key": other}).json()
    assert body["totals"]["requests"] == 0
    assert body["data"] == []


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ({"start": "2025-06-02T00:00:00Z", "end": "2025-06-01T00:00:00Z"}, "start", None),
        ({"granularity": "minute"}, "granularity", None),
        ({"group_by": "user"}, "group_by", None),
        ({"start": "yesterday"}, "start", None),
        ({"start": "0001-01-01T00:00:00Z"}, "start", OUT_OF_RANGE),
        ({"start": "1970-01-01T00:00:00Z", "granularity": "hour"}, "start", None),
    ],
)
def test_bad_queries_are_400_with_the_param(org, query, param, message):
    client = _session(org)
    response = client.get("/api/usage", query)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request_error", param)
    if message:
        assert error["message"] == message


def test_start_after_end_says_so(org):
    query = {"start": "2025-06-02T00:00:00Z", "end": "2025-06-01T00:00:00Z"}
    body = _session(org).get("/api/usage", query).json()
    assert (body["error"]["message"], body["error"]["param"]) == (START_AFTER_END, "start")


def test_csv_has_the_rows_of_the_json(usage_dataset):
    client = _session(usage_dataset.org, role=Role.MEMBER)
    query = {**JUNE, "group_by": "key"}
    body = client.get("/api/usage", query).json()
    response = client.get("/api/usage/csv", query, HTTP_ACCEPT="text/csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == len(body["data"])
    for row, point in zip(rows, body["data"], strict=True):
        assert row["bucket"] == point["bucket"]
        assert row["group"] == point["group"]
        assert (int(row["requests"]), row["cost"]) == (point["requests"], point["cost"])


def test_csv_refuses_like_the_json(usage_dataset):
    response = Client().get("/api/usage/csv", JUNE, **_bearer(usage_dataset.beta))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_a_user_reads_only_an_organization_they_belong_to(usage_dataset):
    client = _session(usage_dataset.org)
    response = client.get("/api/usage", JUNE, HTTP_X_ORGANIZATION=usage_dataset.other_org.slug)
    assert response.status_code == 403
    assert Membership.objects.filter(organization=usage_dataset.other_org).count() == 1
