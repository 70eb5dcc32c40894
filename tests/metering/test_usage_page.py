"""/dashboard/usage/: the tables hold the rollups' numbers, the filters and ranges change them,
another organization's usage never shows; ranges.resolve's presets."""

import re
from datetime import UTC, datetime

import pytest
from django.test import Client

from metering.rollups import ranges
from tests.factories import MembershipFactory
from tests.metering.conftest import expected_june

pytestmark = pytest.mark.django_db


def _client(organization) -> Client:
    client = Client()
    client.force_login(MembershipFactory(organization=organization).user)
    return client


def _table(html: str, testid: str) -> list[list[str]]:
    table = re.search(rf'<table data-testid="{testid}">(.*?)</table>', html, re.S)[1]
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.S)[1]
    return [
        re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def test_the_month_table_has_the_v1_usage_numbers(usage_dataset):
    html = _client(usage_dataset.org).get("/dashboard/usage/", {"range": "month"}).content.decode()
    june = expected_june(usage_dataset)
    requests = _table(html, "table-requests")
    assert len(requests) == 15  # 1..15 June
    assert sum(int(row[-1]) for row in requests) == june["totals"]["requests"]
    assert requests[0][0] == "2025-06-01"
    # Columns: demo-chat, demo-embed, total.
    assert requests[14] == ["2025-06-15", "0", "1", "1"]
    cost = _table(html, "table-cost")
    assert cost[0][-1] == "0.00010000"
    assert f'data-testid="total-cost">${june["totals"]["cost"]}<' in html
    assert "Requests: 4 requests in total; highest 2025-06-14 with 2." in html
    assert 'id="usage-chart-data"' in html


def test_the_key_filter_and_grouping_by_key(usage_dataset):
    client = _client(usage_dataset.org)
    beta = usage_dataset.beta.api_key.key_id
    html = client.get(
        "/dashboard/usage/", {"range": "month", "group": "key", "key": beta}
    ).content.decode()
    rows = _table(html, "table-requests")
    assert sum(int(row[-1]) for row in rows) == 2  # beta's two June requests
    assert f"beta ({beta})" in html
    assert "alpha (" not in html.split('data-testid="table-requests"')[1].split("</table>")[0]


def test_the_24h_range_is_hourly_and_moves_with_the_clock(usage_dataset):
    html = _client(usage_dataset.org).get("/dashboard/usage/", {"range": "24h"}).content.decode()
    rows = _table(html, "table-requests")
    assert len(rows) == 24
    assert rows[0][0] == "2025-06-14 13:00"
    assert sum(int(row[-1]) for row in rows) == expected_june(usage_dataset)["last_24h"]["requests"]


def test_a_custom_range_and_the_csv_link_ask_the_same_query(usage_dataset):
    html = (
        _client(usage_dataset.org)
        .get("/dashboard/usage/", {"range": "custom", "start": "2025-05-31", "end": "2025-06-01"})
        .content.decode()
    )
    rows = _table(html, "table-requests")
    assert len(rows) == 48  # two days by hour
    assert sum(int(row[-1]) for row in rows) == 2
    assert "/api/usage/csv?start=2025-05-31T00%3A00%3A00Z&amp;end=2025-06-02T00%3A00%3A00Z" in html


@pytest.mark.parametrize(
    ("start", "end"), [("2025-06-05", "2025-06-01"), ("garbage", "2025-06-01"), ("", "")]
)
def test_a_custom_range_that_cannot_be_shown_says_so(usage_dataset, start, end):
    client = _client(usage_dataset.org)
    html = client.get(
        "/dashboard/usage/", {"range": "custom", "start": start, "end": end}
    ).content.decode()
    assert "That custom range cannot be shown" in html
    assert "Showing the last 7 days instead." in html
    shown = client.get(
        "/dashboard/usage/", {"range": "custom", "start": "2025-06-01", "end": "2025-06-05"}
    )
    assert "cannot be shown" not in shown.content.decode()


def test_another_organizations_key_is_not_a_filter(usage_dataset):
    other = usage_dataset.other.api_key.key_id
    html = (
        _client(usage_dataset.org)
        .get("/dashboard/usage/", {"range": "month", "key": other})
        .content.decode()
    )
    assert other not in html
    assert sum(int(row[-1]) for row in _table(html, "table-requests")) == 4


def test_anonymous_goes_to_login():
    response = Client().get("/dashboard/usage/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


NOW = datetime(2025, 6, 15, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("preset", "start", "end", "granularity"),
    [
        ("24h", datetime(2025, 6, 14, 13, tzinfo=UTC), datetime(2025, 6, 15, 13, tzinfo=UTC),
         "hour"),
        ("7d", datetime(2025, 6, 9, tzinfo=UTC), datetime(2025, 6, 16, tzinfo=UTC), "day"),
        ("30d", datetime(2025, 5, 17, tzinfo=UTC), datetime(2025, 6, 16, tzinfo=UTC), "day"),
        ("month", datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 16, tzinfo=UTC), "day"),
        ("bogus", datetime(2025, 6, 9, tzinfo=UTC), datetime(2025, 6, 16, tzinfo=UTC), "day"),
    ],
)  # fmt: skip
def test_presets(preset, start, end, granularity):
    chosen = ranges.resolve(preset, None, None, NOW)
    assert (chosen.start, chosen.end, chosen.granularity) == (start, end, granularity)


@pytest.mark.parametrize(
    ("start", "end"), [("2025-06-10", "2025-06-01"), ("junk", "2025-06-01"), ("", "")]
)
def test_an_unreadable_custom_range_falls_back_to_7_days(start, end):
    assert ranges.resolve("custom", start, end, NOW).preset == "7d"


def test_overview_onboards_an_organization_without_calls(org):
    html = _client(org).get("/dashboard/").content.decode()
    assert 'data-testid="onboarding"' in html
    assert 'base_url="http://testserver/v1"' in html
    assert 'data-testid="onboarding-create-key"' in html


def test_overview_shows_spend_and_the_30_day_sparkline(usage_dataset):
    html = _client(usage_dataset.org).get("/dashboard/").content.decode()
    june = expected_june(usage_dataset)
    assert 'data-testid="onboarding"' not in html
    spend = html.split('data-testid="spend"')[1].split("</div></div>")[0]
    spend = re.sub(r"<[^>]+>", "", spend)  # the numbers sit in spans the live refresh updates
    assert f"${june['totals']['cost']}" in spend
    assert f"{june['totals']['requests']} requests at list prices" in spend
    # 16 May .. 15 June: every June request and none of May's (31 May is in: 1 more).
    sparkline = html.split('data-testid="sparkline"')[1]
    assert "5 requests since 2025-05-17; busiest day 2025-06-14 with 2" in sparkline
    assert sparkline.count(",") >= 30  # 30 points
