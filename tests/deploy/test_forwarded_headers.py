"""Client addresses through the production command: X-Forwarded-For is believed only from
CLIENT_IP_PROXIES (gunicorn/uvicorn and the app alike); nobody by default."""

import time

import httpx
import pytest

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent
from aibaas.gateway.models import AIModel
from billing.models import Plan
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory
from tests.servers import production_server

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}
CHAT = "/v1/chat/completions"
# One worker without Redis: a per-IP window of its own, fresh for each test.
SERVER_ENV = {
    "GATEWAY_IP_RATE": "4/m",
    "LOG_LEVEL": "WARNING",
    "REDIS_URL": None,
    "CACHE_URL": None,
    "CELERY_BROKER_URL": None,
}


@pytest.fixture
def chat_model(db):
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)


def _key(**limits) -> tuple[str, str]:
    plan = Plan.objects.create(slug=f"t{time.monotonic_ns()}", name="test")
    owner = MembershipFactory()
    owner.organization.plan = plan
    owner.organization.save()
    created = api_key_create(
        organization=owner.organization, name="ip", actor=Actor.for_system("tests"), **limits
    )
    return created.raw_key, created.api_key.key_id


def _chat(client: httpx.Client, key: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return client.post(CHAT, json=BODY, headers=headers)


def _block_this_address(client: httpx.Client, key: str) -> None:
    for _ in range(10):
        response = _chat(client, key)
        if response.status_code == 429:
            assert "from your address" in response.json()["error"]["message"]
            return
    raise AssertionError("the per-IP limit never refused")


def _wait_for(query, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not query.exists():
        assert time.monotonic() < deadline, "row never written"
        time.sleep(0.05)
    return query.get()


def test_with_no_proxies_configured_x_forwarded_for_changes_nothing(chat_model):
    limited_key, limited_id = _key(requests_per_minute=1)
    key, _ = _key()
    with (
        production_server(workers=1, extra_env=SERVER_ENV) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert _chat(client, limited_key, "10.9.9.9").status_code == 200
        refused = _chat(client, limited_key, "10.9.9.8")
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        _block_this_address(client, key)
        spoofed = _chat(client, key, "10.9.9.9")
        assert spoofed.status_code == 429
        assert "from your address" in spoofed.json()["error"]["message"]
    admitted = _wait_for(UsageEvent.objects.filter(key_id=limited_id, status_code=200))
    assert admitted.client_ip == "127.0.0.1"
    audit = _wait_for(
        AuditEvent.objects.filter(action=AuditAction.RATE_LIMIT_REFUSED, actor_key_id=limited_id)
    )
    assert audit.ip == "127.0.0.1"
    assert not UsageEvent.objects.filter(client_ip__startswith="10.9.9.").exists()


def test_with_127_0_0_1_as_proxy_x_forwarded_for_is_the_client(chat_model):
    key, key_id = _key()
    env = dict(SERVER_ENV, CLIENT_IP_PROXIES="127.0.0.1")
    with (
        production_server(workers=1, extra_env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        _block_this_address(client, key)
        # The proxy says these came from elsewhere: other addresses, other windows.
        assert _chat(client, key, "10.9.9.9").status_code == 200
        assert _chat(client, key, "198.51.100.1, 10.9.9.7").status_code == 200
    recorded = set(
        UsageEvent.objects.filter(key_id=key_id, status_code=200).values_list(
            "client_ip", flat=True
        )
    )
    assert {"10.9.9.9", "10.9.9.7"} <= recorded
    assert "198.51.100.1" not in recorded  # written by the client, before our proxy's entry
