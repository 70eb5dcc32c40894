"""PostgreSQL connections stay within the documented bound whatever the request mix, through
the production command (README, Database connections: I x W x (DB_POOL_MAX_SIZE +
QUOTA_DB_CONNECTIONS) for the app servers)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from django.conf import settings
from django.test import Client

from accounts.actors import Actor
from aibaas.gateway.models import AIModel
from billing.models import Plan
from keys.services import api_key_create
from tests import servers
from tests.factories import AIModelFactory, MembershipFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 2
POOL_MAX = 4
QUOTA_CONNECTIONS = 2
BOUND = WORKERS * (POOL_MAX + QUOTA_CONNECTIONS)  # one instance
APPLICATION_NAME = "aibaas-connection-test"
CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}


class ConnectionSampler(threading.Thread):
    """Counts the server's connections in pg_stat_activity every 20 ms, from its own
    connection (not one of the server's: they carry their application_name)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.done.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [APPLICATION_NAME],
                ).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                time.sleep(0.02)


@pytest.fixture
def chat_model(db):
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)


def test_1000_mixed_requests_at_concurrency_32_stay_within_the_connection_bound(chat_model):
    plan = Plan.objects.create(slug=f"t{time.monotonic_ns()}", name="unlimited")
    owner = MembershipFactory()
    owner.organization.plan = plan
    owner.organization.save()
    created = api_key_create(
        organization=owner.organization,
        name="mix",
        actor=Actor.for_system("tests"),
        scopes=["inference", "usage:read"],
    )
    browser = Client()
    browser.force_login(owner.user)
    session = browser.cookies[settings.SESSION_COOKIE_NAME].value

    database_url = servers.test_database_url()
    sep = "&" if "?" in database_url else "?"
    server_url = f"{database_url}{sep}{urlencode({'application_name': APPLICATION_NAME})}"
    env = {
        "DATABASE_URL": server_url,
        "DB_POOL_MAX_SIZE": str(POOL_MAX),
        "QUOTA_DB_CONNECTIONS": str(QUOTA_CONNECTIONS),
        "GATEWAY_IP_RATE": "",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "off",
    }
    key_headers = {"Authorization": f"Bearer {created.raw_key}"}
    requests = [
        ("GET", "/dashboard/", {}, None),
        ("GET", "/dashboard/keys/", {}, None),
        ("GET", "/api/keys", {}, None),
        ("GET", f"/api/keys/{created.api_key.pk}", {}, None),
        ("POST", "/v1/chat/completions", key_headers, CHAT),
        ("GET", "/v1/models", key_headers, None),
        ("GET", "/v1/key", key_headers, None),
        ("GET", "/v1/usage", key_headers, None),
    ]
    sampler = ConnectionSampler(database_url)
    with servers.production_server(workers=WORKERS, extra_env=env) as server:
        client = httpx.Client(
            base_url=server.url,
            cookies={settings.SESSION_COOKIE_NAME: session},
            timeout=60,
            limits=httpx.Limits(max_connections=32),
        )

        def one(i: int) -> tuple[str, int]:
            method, path, headers, body = requests[i % len(requests)]
            response = client.request(method, path, headers=headers, json=body)
            return path, response.status_code

        sampler.start()
        try:
            with ThreadPoolExecutor(32) as pool:
                results = list(pool.map(one, range(1000)))
        finally:
            sampler.done.set()
            sampler.join()
            client.close()
    errors = [(path, status) for path, status in results if status != 200]
    assert errors == []
    print(f"peak {sampler.peak} connections of bound {BOUND}, {sampler.samples} samples")
    assert sampler.samples > 10
    assert 0 < sampler.peak <= BOUND, f"{sampler.peak} connections, bound {BOUND}"


def test_no_thread_keeps_a_pooled_connection_from_the_requests(chat_model):
    """A pool of ONE connection: work the gateway does outside a request (registry and price
    refreshes, usage events written to the database without Redis) must give it back, or
    every later dashboard/API request waits DB_POOL_TIMEOUT and fails."""
    plan = Plan.objects.create(slug=f"t{time.monotonic_ns()}", name="unlimited")
    owner = MembershipFactory()
    owner.organization.plan = plan
    owner.organization.save()
    created = api_key_create(
        organization=owner.organization,
        name="one",
        actor=Actor.for_system("tests"),
        scopes=["inference", "usage:read"],
    )
    key_headers = {"Authorization": f"Bearer {created.raw_key}"}
    env = {
        "DB_POOL_MIN_SIZE": "0",
        "DB_POOL_MAX_SIZE": "1",
        "DB_POOL_TIMEOUT": "3",
        "REGISTRY_TTL": "0.1",
        "PRICING_TTL": "0.1",
        "REDIS_URL": None,  # usage events go to the database from the gateway's thread
        "CACHE_URL": None,
        "CELERY_BROKER_URL": None,
        "GATEWAY_IP_RATE": "",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "off",
    }
    requests = [
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
        ("GET", "/v1/key", None),
        ("GET", "/v1/usage", None),
    ]
    with (
        servers.production_server(workers=1, extra_env=env) as server,
        httpx.Client(base_url=server.url, headers=key_headers, timeout=30) as client,
    ):

        def one(i: int) -> tuple[str, int]:
            method, path, body = requests[i % len(requests)]
            if i % 16 == 0:
                time.sleep(0.15)  # let the snapshots age: refreshes run between requests
            return path, client.request(method, path, json=body).status_code

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(160)))
    assert [(path, status) for path, status in results if status != 200] == []
