import os

import pytest
from django.db import OperationalError, connection

from tests.metering import limiter_calls as calls

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"
METRICS_TOKEN = "operator-token-4f1c9a"


@pytest.fixture
def operator(settings) -> dict:
    """Headers of an operator: /metrics and the detail of /readyz are theirs only."""
    settings.METRICS_TOKEN = METRICS_TOKEN
    return {"HTTP_AUTHORIZATION": f"Bearer {METRICS_TOKEN}"}


def test_healthz_is_200_json_and_touches_nothing(client):
    # No django_db mark: any query would raise, so this also proves the probe stays off the DB.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_is_200_when_everything_answers(client, operator):
    response = client.get("/readyz", **operator)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    if os.environ.get("REDIS_URL"):
        assert body["checks"]["redis"] == "ok"
    else:
        assert "redis" not in body["checks"]
    assert "down" not in body


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_is_unreachable(client, settings, operator):
    settings.REDIS_URL = CLOSED_PORT_REDIS
    settings.CACHE_URL = CLOSED_PORT_REDIS

    response = client.get("/readyz", **operator)

    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "unavailable"
    assert "redis" in body["down"]
    assert "Connection" in body["down"]["redis"]
    assert body["checks"] == {"database": "ok"}


@pytest.mark.django_db
def test_readyz_names_a_separately_configured_cache_that_is_down(client, settings, operator):
    settings.REDIS_URL = ""
    settings.CACHE_URL = CLOSED_PORT_REDIS

    response = client.get("/readyz", **operator)

    assert response.status_code == 503
    assert set(response.json()["down"]) == {"cache"}


@pytest.mark.django_db
def test_readyz_is_503_naming_the_database_when_it_is_down(client, monkeypatch, operator):
    def refuse(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1 refused")

    # Django's connection, not ours: the closest thing to a dead database server in-process.
    monkeypatch.setattr(connection, "cursor", refuse)

    response = client.get("/readyz", **operator)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["down"]["database"] == "OperationalError: connection to server at 127.0.0.1 refused"
    assert "database" not in body["checks"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_only_answer_get(client, path):
    assert client.post(path).status_code == 405


@pytest.fixture
def fresh_limiter():
    from metering import limiter

    limiter.reset_state()
    yield limiter
    limiter.reset_state()


def test_metrics_say_where_the_limiter_counts(client, settings, fresh_limiter, operator):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    response = client.get("/metrics", **operator)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    pid = os.getpid()
    assert f'aibaas_rate_limiter_backend{{backend="redis",pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_redis_down{{pid="{pid}"}} 0.0' in text
    assert f'aibaas_rate_limiter_fallbacks_total{{pid="{pid}"}} 0.0' in text


@pytest.mark.django_db
def test_a_redis_outage_shows_in_readyz_and_metrics_as_local_limiting(
    client, settings, fresh_limiter, operator
):
    settings.REDIS_URL = CLOSED_PORT_REDIS
    limits = fresh_limiter.limits_for({"requests_per_minute": 5})
    decisions = [calls.check("health", limits) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]  # still limiting
    assert {d.backend for d in decisions} == {"local"}

    ready = client.get("/readyz", **operator).json()
    assert ready["limiter"]["backend"] == "local"
    assert ready["limiter"]["redis_down_since"] is not None
    text = client.get("/metrics", **operator).content.decode()
    pid = os.getpid()
    assert f'aibaas_rate_limiter_backend{{backend="local",pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_redis_down{{pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_fallbacks_total{{pid="{pid}"}} 6.0' in text


# --- who may see what -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("configured", [False, True], ids=["nothing-configured", "token-set"])
def test_without_authorization_readyz_answers_its_status_alone(client, settings, configured):
    if configured:
        settings.METRICS_TOKEN = METRICS_TOKEN
    assert client.get("/readyz").json() == {"status": "ok"}
    settings.REDIS_URL = settings.CACHE_URL = CLOSED_PORT_REDIS
    down = client.get("/readyz", HTTP_AUTHORIZATION="Bearer wrong")
    assert (down.status_code, down.json()) == (503, {"status": "unavailable"})


@pytest.mark.parametrize(
    ("token", "authorization", "status"),
    [
        ("", None, 403),  # nothing configured: nobody
        ("", f"Bearer {METRICS_TOKEN}", 403),
        (METRICS_TOKEN, None, 401),
        (METRICS_TOKEN, "Bearer wrong", 401),
        (METRICS_TOKEN, f"Basic {METRICS_TOKEN}", 401),
    ],
)
def test_metrics_refuse_anyone_but_operators(client, settings, token, authorization, status):
    settings.METRICS_TOKEN = token
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/metrics", **headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "metrics_unauthorized"
    assert "aibaas_rate_limiter" not in response.content.decode()
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("networks", "address", "allowed"),
    [
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "192.0.2.1", False),
        (["2001:db8::/32"], "2001:db8::5", True),
    ],
)
def test_metrics_and_readyz_detail_from_the_operator_networks(
    client, settings, networks, address, allowed
):
    settings.METRICS_ALLOWED_NETWORKS = networks
    metrics = client.get("/metrics", REMOTE_ADDR=address)
    ready = client.get("/readyz", REMOTE_ADDR=address).json()
    assert (metrics.status_code == 200) is allowed
    assert ("limiter" in ready) is allowed


@pytest.mark.django_db
def test_an_operator_network_is_judged_on_the_real_client_not_its_header(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    spoofed = client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.0.0.1")
    assert spoofed.status_code == 403
