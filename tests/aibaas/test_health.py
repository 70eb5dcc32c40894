import os

import pytest
from django.db import OperationalError, connection

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


def test_healthz_is_200_json_and_touches_nothing(client):
    # No django_db mark: any query would raise, so this also proves the probe stays off the DB.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_is_200_when_everything_answers(client):
    response = client.get("/readyz")

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
def test_readyz_is_503_naming_redis_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = CLOSED_PORT_REDIS
    settings.CACHE_URL = CLOSED_PORT_REDIS

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "unavailable"
    assert "redis" in body["down"]
    assert "Connection" in body["down"]["redis"]
    assert body["checks"] == {"database": "ok"}


@pytest.mark.django_db
def test_readyz_names_a_separately_configured_cache_that_is_down(client, settings):
    settings.REDIS_URL = ""
    settings.CACHE_URL = CLOSED_PORT_REDIS

    response = client.get("/readyz")

    assert response.status_code == 503
    assert set(response.json()["down"]) == {"cache"}


@pytest.mark.django_db
def test_readyz_is_503_naming_the_database_when_it_is_down(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1 refused")

    # Django's connection, not ours: the closest thing to a dead database server in-process.
    monkeypatch.setattr(connection, "cursor", refuse)

    response = client.get("/readyz")

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


def test_metrics_say_where_the_limiter_counts(client, settings, fresh_limiter):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    pid = os.getpid()
    assert f'aibaas_rate_limiter_backend{{backend="redis",pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_redis_down{{pid="{pid}"}} 0.0' in text
    assert f'aibaas_rate_limiter_fallbacks_total{{pid="{pid}"}} 0.0' in text


@pytest.mark.django_db
def test_a_redis_outage_shows_in_readyz_and_metrics_as_local_limiting(
    client, settings, fresh_limiter
):
    settings.REDIS_URL = CLOSED_PORT_REDIS
    limits = fresh_limiter.limits_for({"requests_per_minute": 5})
    decisions = [fresh_limiter.check("health", limits) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]  # still limiting
    assert {d.backend for d in decisions} == {"local"}

    ready = client.get("/readyz").json()
    assert ready["limiter"]["backend"] == "local"
    assert ready["limiter"]["redis_down_since"] is not None
    text = client.get("/metrics").content.decode()
    pid = os.getpid()
    assert f'aibaas_rate_limiter_backend{{backend="local",pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_redis_down{{pid="{pid}"}} 1.0' in text
    assert f'aibaas_rate_limiter_fallbacks_total{{pid="{pid}"}} 6.0' in text
