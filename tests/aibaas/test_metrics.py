"""Prometheus metrics (infra/metrics.py, aibaas/gateway/metrics.py), read as Prometheus does:
GET /metrics with the operator's token, parsed by prometheus_client's own parser.

Live servers (PostgreSQL + Redis): the openai SDK against a uvicorn process moves the /v1
series; a refusal moves the refusal series with its limit; a failing model server moves the
upstream errors; no label value carries a key, an organization or a user; two gunicorn workers
sharing PROMETHEUS_MULTIPROC_DIR are merged into one total. In this process: the HTTP series by
URL pattern, a failing Celery task, the usage lag observed by the drain.
"""

import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from accounts.actors import Actor
from aibaas.gateway.models import ModelKind, ProviderKind
from billing.models import Plan
from billing.subscriptions.tasks import send_meter_report
from infra import metric_batch
from keys import touch
from keys.services import api_key_create
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory, UpstreamFactory
from tests.servers import free_port, production_server, server_process

TOKEN = "metrics-operator-token-7d2e"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
HELLO = [{"role": "user", "content": "Tell me about foxes."}]
DOWN = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", headers=OPERATOR, timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    wanted = labels.items()
    return sum(
        v for n, have, v in samples if n == name and all(have.get(k) == w for k, w in wanted)
    )


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def demo_models(db):
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    embed = AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    ModelPriceFactory(model=chat, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    ModelPriceFactory(model=embed, input_per_million=Decimal("0.1"), output_per_million=0)


def _issue(plan: str | None = None, **limits):
    organization = MembershipFactory().organization
    if plan is not None:
        organization.plan = Plan.objects.get(slug=plan)
        organization.save()
    return api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="metrics", **limits
    )


def _upstream_model(name: str, base_url: str, upstream_name: str) -> None:
    model = AIModelFactory(name=name, provider=ProviderKind.OPENAI_COMPATIBLE)
    UpstreamFactory(
        model=model,
        base_url=base_url,
        upstream_model=upstream_name,
        api_key_env="",
        timeout_seconds=5.0,
        connect_timeout_seconds=1.0,
    )


def _eventually(base: str, check, timeout: float = 10.0) -> Samples:
    """Scrape until `check(samples)` holds (usage events, and their tokens, are recorded just
    after the response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.fixture
def live(demo_models, upstream) -> Iterator[str]:
    # Before the server starts: its registry snapshot is read once.
    _upstream_model("broken", upstream.base_url, "fake-500")
    _upstream_model("unreachable", DOWN, "fake")
    _upstream_model("cut", upstream.base_url, "fake-error-mid-stream")
    with server_process(extra_env={"METRICS_TOKEN": TOKEN}) as base:
        yield base


def check_a_served_request_moves_the_v1_series(base: str) -> None:
    issued = _issue()
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=issued.raw_key, max_retries=0)
    first = sdk.chat.completions.create(model="demo-chat", messages=HELLO)
    stream = sdk.chat.completions.create(
        model="demo-chat", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    second = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    sdk.embeddings.create(model="demo-embed", input="a fox")
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-17", messages=HELLO)
    prompt = first.usage.prompt_tokens + second.prompt_tokens
    completion = first.usage.completion_tokens + second.completion_tokens

    def tokens(samples: Samples) -> float:
        return value(samples, "aibaas_v1_tokens_total", model="demo-chat", direction="output")

    samples = _eventually(base, lambda samples: tokens(samples) >= completion)
    chat = {"endpoint": "chat.completions", "model": "demo-chat"}
    served = {"status": "200", "outcome": "served"}
    assert value(samples, "aibaas_v1_requests_total", **chat, **served) == 2
    assert value(samples, "aibaas_v1_requests_total", model="demo-embed", **served) == 1
    unknown = {"model": "other", "status": "404", "outcome": "client_error"}
    assert value(samples, "aibaas_v1_requests_total", **unknown) == 1
    assert value(samples, "aibaas_v1_request_duration_seconds_count", **chat) == 2
    assert value(samples, "aibaas_v1_time_to_first_token_seconds_count", model="demo-chat") == 1
    assert tokens(samples) == completion
    input_tokens = value(samples, "aibaas_v1_tokens_total", model="demo-chat", direction="input")
    assert input_tokens == prompt
    admitted = value(samples, "aibaas_limiter_decisions_total", decision="admitted")
    assert admitted == 3
    # Django's side, by URL pattern: the server's start was awaited on /healthz.
    assert value(samples, "aibaas_http_requests_total", route="healthz", status="200") >= 1


def check_a_refusal_names_its_limit(base: str) -> None:
    issued = _issue(requests_per_minute=1)
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=issued.raw_key, max_retries=0)
    before = scrape(base)
    sdk.embeddings.create(model="demo-embed", input="a fox")
    with pytest.raises(openai.RateLimitError):
        sdk.embeddings.create(model="demo-embed", input="a fox")
    after = scrape(base)
    refused = {"model": "demo-embed", "status": "429", "outcome": "refused_rate"}
    name = "aibaas_v1_requests_total"
    assert value(after, name, **refused) - value(before, name, **refused) == 1
    decision = {"decision": "refused", "limit": "requests_per_minute"}
    name = "aibaas_limiter_decisions_total"
    assert value(after, name, **decision) - value(before, name, **decision) == 1


def check_upstream_errors_are_counted_per_upstream(base: str, upstream) -> None:
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=_issue().raw_key, max_retries=0)
    for model in ("broken", "unreachable"):
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model=model, messages=HELLO)
    samples = scrape(base)
    where = upstream.base_url.split("//")[1].split("/")[0]
    errors = "aibaas_upstream_errors_total"
    # A lone upstream is tried twice (one retry).
    assert value(samples, errors, upstream=where, kind="http_500") == 2
    assert value(samples, errors, upstream=DOWN.split("//")[1][: -len("/v1")], kind="unreachable")
    assert value(samples, "aibaas_upstream_response_seconds_count", upstream=where) >= 2
    failed = {"model": "broken", "status": "502", "outcome": "upstream_error"}
    assert value(samples, "aibaas_v1_requests_total", **failed) == 1

    # A stream that fails after its 200: an upstream error all the same.
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={"model": "cut", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {_issue().raw_key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert b"error" in response.read()
    cut = {"model": "cut", "status": "200", "outcome": "upstream_error"}
    assert value(scrape(base), "aibaas_v1_requests_total", **cut) == 1


def check_no_label_carries_a_key_an_organization_or_a_user(base: str) -> None:
    issued = _issue()
    organization = issued.api_key.organization
    owner = organization.memberships.first().user
    raw = issued.raw_key
    with httpx.Client(base_url=base, timeout=10) as client:
        client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {raw}"},
            json={"model": raw, "messages": [{"role": "user", "content": raw}]},
        )
        client.get(f"/v1/models/{raw}", headers={"Authorization": f"Bearer {raw}"})
        client.get(f"/api/keys/{issued.api_key.key_id}", headers={"Authorization": f"Bearer {raw}"})
        client.get(f"/dashboard/{organization.slug}/")
    samples = scrape(base)
    forbidden = [raw, issued.api_key.key_id, organization.slug, owner.email]
    for name, labels, _ in samples:
        if name.startswith("aibaas_rate_limiter"):
            continue  # pid: the process (existing gauges of the answering worker)
        for label_value in labels.values():
            assert not any(secret in label_value for secret in forbidden), (name, labels)
    assert value(samples, "aibaas_http_requests_total", route="api/keys/<str:ident>") == 1


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_metrics_of_a_live_server(live, upstream):
    check_a_served_request_moves_the_v1_series(live)
    check_a_refusal_names_its_limit(live)
    check_upstream_errors_are_counted_per_upstream(live, upstream)
    check_no_label_carries_a_key_an_organization_or_a_user(live)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_gunicorn_workers_are_merged_into_one_total(demo_models, tmp_path):
    issued = _issue(plan="enterprise")  # no limit in the way
    sent = 40
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": TOKEN}
    stale = tmp_path / "counter_999999999.db"  # a previous run's file: cleared at the start
    stale.write_bytes(b"")
    with production_server(workers=2, extra_env=env) as server:
        assert not stale.exists()
        for _ in range(sent):
            # A connection per request: the kernel spreads them over both workers.
            response = httpx.post(
                f"{server.url}/v1/embeddings",
                json={"model": "demo-embed", "input": "a fox"},
                headers={"Authorization": f"Bearer {issued.raw_key}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        served = {"endpoint": "embeddings", "outcome": "served"}
        name = "aibaas_v1_requests_total"
        # The worker answering the scrape applies its own counts first; the other's arrive
        # within metric_batch.FLUSH_SECONDS (infra/metric_batch.py).
        deadline = time.monotonic() + metric_batch.FLUSH_SECONDS + 5
        while value(scrape(server.url), name, **served) != sent:
            assert time.monotonic() < deadline, value(scrape(server.url), name, **served)
            time.sleep(0.1)
        for _ in range(4):  # whichever worker answers the scrape
            assert value(scrape(server.url), name, **served) == sent
        per_process = []
        for path in tmp_path.glob("counter_*.db"):
            families = MultiProcessCollector.merge([str(path)])
            per_process.append(
                sum(
                    s.value
                    for family in families
                    for s in family.samples
                    if s.name == name and s.labels.get("outcome") == "served"
                )
            )
    assert sum(per_process) == sent
    assert len([count for count in per_process if count]) == 2, per_process


@pytest.mark.django_db
def test_the_http_series_name_the_url_pattern_never_the_path(client, settings):
    settings.METRICS_TOKEN = TOKEN
    client.get("/api/keys/abc123xyz")
    client.get("/healthz")
    samples = parse(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").text)
    keys = value(samples, "aibaas_http_requests_total", route="api/keys/<str:ident>", status="401")
    assert keys >= 1
    assert value(samples, "aibaas_http_request_duration_seconds_count", route="healthz") >= 1
    assert not [labels for _, labels, _ in samples if "abc123xyz" in str(labels)]


@pytest.mark.django_db
def test_a_failing_celery_task_moves_the_failure_counter(client, settings):
    settings.METRICS_TOKEN = TOKEN
    name, task = "aibaas_celery_task_failures_total", send_meter_report.name

    def failures() -> float:
        text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").text
        return value(parse(text), name, task=task)

    before = failures()
    result = send_meter_report.apply(kwargs={"report_id": "not-a-number"}, throw=False)
    assert result.failed()
    assert failures() - before == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_drain_observes_the_usage_lag(client, settings, demo_models):
    from metering.usage import usage_drain
    from tests.gateway.asgi_client import BASE, SyncAsgiTransport

    settings.METRICS_TOKEN = TOKEN
    settings.CELERY_BROKER_URL = settings.REDIS_URL  # events go through the stream
    usage_drain()  # whatever earlier tests left

    def lag() -> tuple[float, float]:
        samples = parse(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").text)
        return (
            value(samples, "aibaas_usage_event_lag_seconds_count"),
            value(samples, "aibaas_usage_event_lag_seconds_sum"),
        )

    count, total = lag()
    issued = _issue()
    with httpx.Client(base_url=BASE, transport=SyncAsgiTransport()) as http:
        for _ in range(3):
            response = http.post(
                "/v1/embeddings",
                json={"model": "demo-embed", "input": "a fox"},
                headers={"Authorization": f"Bearer {issued.raw_key}"},
            )
            assert response.status_code == 200
    time.sleep(0.3)
    assert usage_drain() == 3
    after_count, after_total = lag()
    assert after_count - count == 3
    assert 0.3 * 3 <= after_total - total < 60


def test_the_grafana_dashboard_reads_only_series_aibaas_exports(client, settings, db):
    """deploy/grafana/aibaas.json: every series its queries name is one /metrics serves."""
    import json
    import re

    from tests.servers import ROOT

    settings.METRICS_TOKEN = TOKEN
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "aibaas.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\baibaas_[a-z0-9_]+", query)}
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").text
    families = text_string_to_metric_families(text)
    exported = {"aibaas_usage_stream_length"}  # read at the scrape, with a stream only
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        exported |= {family.name + s for s in suffixes.get(family.type, [""])}
    assert used and used <= exported, used - exported
    assert {"aibaas_v1_tokens_total", "aibaas_usage_event_lag_seconds_bucket"} <= used
