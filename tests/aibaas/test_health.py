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
