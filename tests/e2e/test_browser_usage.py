"""/dashboard/usage/ in a real Chromium after real calls through the openai SDK: the charts draw
the numbers of /v1/usage and of the tables, filters and ranges change them, the CSV download
holds the table's numbers."""

import csv
import io
from decimal import Decimal

import httpx
import openai
import pytest
from selenium.webdriver.support.ui import Select

from accounts.actors import Actor
from aibaas.gateway.models import ModelKind
from keys import touch
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.e2e.conftest import PHONE, set_viewport
from tests.factories import PASSWORD, AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.gateway.asgi_client import BASE, SyncAsgiTransport

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHARTS = ("requests", "total_tokens", "cost", "latency")


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


def _sdk(raw_key: str) -> openai.OpenAI:
    http = httpx.Client(base_url=BASE, transport=SyncAsgiTransport(), timeout=30)
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=raw_key, max_retries=0, http_client=http)


@pytest.fixture
def used_organization(db):
    """An owner whose organization made 6 billable calls through the openai SDK: alpha 3 chat
    completions, beta 2 chat completions and 1 embedding; and one refused call (unknown
    model)."""
    owner = MembershipFactory()
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    embed = AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    ModelPriceFactory(model=chat, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    ModelPriceFactory(model=embed, input_per_million=Decimal("0.1"), output_per_million=0)
    keys = {
        name: api_key_create(
            organization=owner.organization,
            actor=Actor.for_system("tests"),
            name=name,
            scopes=["inference", "usage:read"],
        )
        for name in ("alpha", "beta")
    }
    alpha, beta = _sdk(keys["alpha"].raw_key), _sdk(keys["beta"].raw_key)
    for i in range(3):
        alpha.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": f"fox number {i}"}]
        )
    for i in range(2):
        stream = beta.chat.completions.create(
            model="demo-chat",
            messages=[{"role": "user", "content": f"streamed fox {i}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        list(stream)
    beta.embeddings.create(model="demo-embed", input="a fox")
    with pytest.raises(openai.NotFoundError):
        beta.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert UsageEvent.objects.filter(organization=owner.organization).count() == 7
    return owner, keys


def _v1_usage(raw_key: str) -> dict:
    with httpx.Client(base_url=BASE, transport=SyncAsgiTransport()) as http:
        response = http.get("/v1/usage", headers={"Authorization": f"Bearer {raw_key}"})
    assert response.status_code == 200
    return response.json()


def _cells(web, testid: str) -> list[list[str]]:
    """A table's body cells, hidden or not (the tables are folded under the charts)."""
    return web.js(
        """return Array.from(document.querySelectorAll('[data-testid="' + arguments[0] +
           '"] tbody tr')).map(tr => Array.from(tr.children).map(c => c.textContent.trim()));""",
        testid,
    )


def _headers(web, testid: str) -> list[str]:
    return web.js(
        """return Array.from(document.querySelectorAll('[data-testid="' + arguments[0] +
           '"] thead th')).map(th => th.textContent.trim());""",
        testid,
    )


def _drawn(web, chart: str) -> list[list]:
    """What uPlot holds for a chart: [x, series...]."""
    return web.js(
        "return document.querySelector('figure[data-chart=\"' + arguments[0] + '\"]').uplot.data;",
        chart,
    )


def _painted(web, chart: str) -> int:
    """How many pixels of the chart's canvas carry a series colour (bars or lines)."""
    return web.js(
        """const canvas = document.querySelector('figure[data-chart="' + arguments[0] +
             '"] canvas');
           const data = canvas.getContext('2d').getImageData(0, 0, canvas.width,
             canvas.height).data;
           let count = 0;
           for (let i = 0; i < data.length; i += 4) {
             const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
             if ((r === 79 && g === 70 && b === 229) || (r === 14 && g === 165 && b === 233) ||
                 (r === 245 && g === 158 && b === 11)) { count++; }
           }
           return count;""",
        chart,
    )


def _ticks(web, chart: str) -> list[list[str]]:
    """The tick labels uPlot drew on each axis of a chart (x first)."""
    return web.js(
        """return document.querySelector('figure[data-chart="' + arguments[0] + '"]').uplot
             .axes.map(axis => (axis._values || []).map(String));""",
        chart,
    )


def _open(web, query: str = "") -> None:
    web.open(f"/dashboard/usage/{query}")
    web.wait_for_path("/dashboard/usage/")
    web.wait(
        lambda d: len(web.find_all("figure.chart[data-rendered]")) == len(CHARTS),
        "the charts were not drawn",
    )


def test_charts_tables_and_v1_usage_agree_and_filters_change_them(web, used_organization):
    owner, keys = used_organization
    usage = _v1_usage(keys["alpha"].raw_key)
    web.log_in(owner.user.email, PASSWORD)
    _open(web, "?range=24h")
    assert web.js("return typeof uPlot") == "function"

    # The totals, the tables and the charts hold /v1/usage's numbers.
    assert web.find('[data-testid="total-requests"]').text == str(usage["last_24h"]["requests"])
    assert web.find('[data-testid="total-cost"]').text == f"${usage['last_24h']['cost']}"
    assert usage["last_24h"]["requests"] == 6 and usage["last_24h"]["refused"] == 1
    requests = _cells(web, "table-requests")
    assert len(requests) == 24
    assert sum(int(row[-1]) for row in requests) == 6
    drawn = _drawn(web, "requests")
    # Stacked: the first series drawn is the running total of every group.
    assert [int(v) for v in drawn[1]] == [int(row[-1]) for row in requests]
    assert _headers(web, "table-requests")[1:-1] == ["demo-chat", "demo-embed"]
    by_model = {row["model"]: row for row in usage["by_model"]}
    assert sum(int(row[1]) for row in requests) == by_model["demo-chat"]["requests"] == 5
    tokens = _cells(web, "table-total_tokens")
    assert sum(int(row[-1]) for row in tokens) == (
        usage["last_24h"]["input_tokens"] + usage["last_24h"]["output_tokens"]
    )
    cost = _cells(web, "table-cost")
    assert sum(Decimal(row[-1]) for row in cost) == Decimal(usage["last_24h"]["cost"])
    for chart in CHARTS:
        assert _painted(web, chart) > 0, f"nothing drawn in the {chart} chart"
    latency = _drawn(web, "latency")
    assert any(value is not None for value in latency[1])  # p50 where there were requests
    assert "Requests: 6 requests in total" in web.find('[data-testid="summary-requests"]').text
    # Numbers as people write them: the embedding's cost is 0.0000002, not 2E-7.
    assert "E-" not in web.find('[data-testid="summary-cost"]').text

    # By day, every tick names another day, and the cost axis's ticks are distinct (with
    # uPlot's 3 decimals its steps of $0.0002 read "0, 0, 0, 0.001").
    _open(web, "?range=7d")
    for chart in CHARTS:
        for axis in _ticks(web, chart):
            assert len(axis) == len(set(axis)) > 1, (chart, axis)
        # Half a day of room at each end: the first and last bars are drawn whole.
        low, high, first, last = web.js(
            """const u = document.querySelector('figure[data-chart="' + arguments[0] + '"]')
                 .uplot;
               return [u.scales.x.min, u.scales.x.max, u.data[0][0], u.data[0].at(-1)];""",
            chart,
        )
        assert (first - low, high - last) == (43200, 43200), chart
    web.open("/dashboard/usage/?range=24h")

    # Stack by key, filtered to one model: beta's embedding alone.
    Select(web.find('[data-testid="group"]')).select_by_value("key")
    Select(web.find('[data-testid="model"]')).select_by_value("demo-embed")
    web.submit("Apply")
    web.wait(lambda d: len(web.find_all("figure.chart[data-rendered]")) == len(CHARTS))
    assert web.find('[data-testid="total-requests"]').text == "1"
    beta = keys["beta"].api_key.key_id
    assert _headers(web, "table-requests")[1:-1] == [f"beta ({beta})"]

    # One key, every model: alpha's 3.
    Select(web.find('[data-testid="model"]')).select_by_value("")
    Select(web.find('[data-testid="key"]')).select_by_value(keys["alpha"].api_key.key_id)
    web.submit("Apply")
    web.wait(lambda d: len(web.find_all("figure.chart[data-rendered]")) == len(CHARTS))
    assert web.find('[data-testid="total-requests"]').text == "3"

    # A range with no usage: zeros everywhere, said in words.
    Select(web.find('[data-testid="key"]')).select_by_value("")
    Select(web.find('[data-testid="range"]')).select_by_value("custom")
    web.js("document.querySelector('[data-testid=start]').value = '2020-01-01';")
    web.js("document.querySelector('[data-testid=end]').value = '2020-01-05';")
    web.submit("Apply")
    web.wait(lambda d: len(web.find_all("figure.chart[data-rendered]")) == len(CHARTS))
    assert web.find('[data-testid="total-requests"]').text == "0"
    assert len(_cells(web, "table-requests")) == 5
    assert "none in this range" in web.find('[data-testid="summary-requests"]').text


def test_the_csv_download_holds_the_tables_numbers(web, used_organization):
    owner, _ = used_organization
    web.log_in(owner.user.email, PASSWORD)
    _open(web, "?range=7d&group=model")
    href = web.find('[data-testid="csv-download"]').get_attribute("href")
    text = web.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done);",
        href,
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, text[:300]
    groups = _headers(web, "table-requests")[1:-1]
    table = {row[0]: row for row in _cells(web, "table-requests")}
    cost = {row[0]: row for row in _cells(web, "table-cost")}
    tokens = {row[0]: row for row in _cells(web, "table-total_tokens")}
    for row in rows:
        day = row["bucket"][:10]
        column = 1 + groups.index(row["group"])
        assert table[day][column] == row["requests"]
        assert cost[day][column] == row["cost"]
        assert tokens[day][column] == row["total_tokens"]
    assert (
        sum(int(row["requests"]) for row in rows)
        == sum(int(row[-1]) for row in table.values())
        == 6
    )


def test_the_usage_page_fits_a_phone(web, used_organization):
    owner, _ = used_organization
    web.log_in(owner.user.email, PASSWORD)
    set_viewport(web.driver, *PHONE, mobile=True)
    _open(web, "?range=30d&group=key")
    assert web.js("return document.documentElement.scrollWidth") <= PHONE[0]
    assert web.js("return window.innerWidth") == PHONE[0]
    for chart in CHARTS:
        width = web.js(
            "return document.querySelector('figure[data-chart=\"' + arguments[0] + '\"] canvas')"
            ".getBoundingClientRect().width;",
            chart,
        )
        assert 0 < width <= PHONE[0]
