import os

import pytest
from django.core.cache import cache
from django.db.models.signals import post_migrate

from billing.defaults import seed_plans
from tests.factories import PASSWORD, MembershipFactory


def _reseed_plans(sender, using="default", **kwargs):
    # Transactional tests flush every table and then emit post_migrate; the seeded plans are
    # part of the schema's starting state (a data migration), so put them back.
    if sender.name == "billing":
        from django.apps import apps

        seed_plans(apps.get_model("billing", "Plan"))


post_migrate.connect(_reseed_plans, dispatch_uid="tests-reseed-plans")


def pytest_collection_modifyitems(config, items):
    """`postgres` and `redis` tests skip with a reason when their service is not configured."""
    database_url = os.environ.get("DATABASE_URL", "")
    for item in items:
        if "postgres" in item.keywords and not database_url.startswith(("postgres", "pgsql")):
            item.add_marker(pytest.mark.skip(reason="needs DATABASE_URL=postgres://..."))
        if "redis" in item.keywords and not os.environ.get("REDIS_URL"):
            item.add_marker(pytest.mark.skip(reason="needs REDIS_URL=redis://..."))


@pytest.fixture(autouse=True)
def _fresh_process_snapshots():
    """The model registry and price snapshots live in the process: a snapshot of one test's
    rows must not leak into the next test."""
    from aibaas.gateway import registry
    from billing import pricing

    registry.clear()
    pricing.clear()
    yield
    registry.clear()
    pricing.clear()


@pytest.fixture(scope="session", autouse=True)
def _close_background_connections(django_db_setup, django_db_blocker):
    """The last-used writer thread holds its own database connection: close it before the test
    database is dropped (PostgreSQL refuses to drop a database in use). For every test
    package: one place."""
    yield
    from keys import touch

    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture(autouse=True)
def _key_touches_stay_in_their_test(django_db_blocker):
    """A request with an API key queues a last-used write on a background thread (keys/touch.py).
    Wait for it after every test, database unblocked: run later, during a test without database
    access, it failed, and every later `touch.flush()` raised that failure again."""
    yield
    from keys import touch

    with django_db_blocker.unblock():
        touch.flush()


@pytest.fixture(autouse=True)
def _close_quota_connections():
    """The quota's async PostgreSQL connections (metering/quota/batched.py) belong to event
    loops that end with the test: close them, or the test database cannot be dropped."""
    yield
    from metering.quota import close_connections

    close_connections()


@pytest.fixture(autouse=True)
def _clean_cache():
    """Every test starts with an empty cache (only this run's key prefix when on Redis)."""
    _clear_cache()
    yield
    _clear_cache()


def _clear_cache():
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")
    else:
        cache.clear()


@pytest.fixture(scope="module")
def upstream():
    """The fake OpenAI-compatible model server (aibaas/bench/fake_upstream.py) in a thread."""
    from aibaas.bench import fake_upstream
    from tests.servers import free_port

    server = fake_upstream.serve_in_thread(free_port())
    yield server
    server.stop()


WEBHOOK_SECRET = "whsec_test_secret_for_the_suite"


@pytest.fixture(scope="session")
def fake_stripe():
    """localstripe in a process of its own, and our front for what it lacks
    (tests/stripe_fake.py), on free ports; stopped at the end of the run."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.servers import ROOT, free_port
    from tests.stripe_fake import FakeStripeServer

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.localstripe_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    localstripe = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{localstripe}/v1/customers", timeout=1, auth=("sk_test_x", ""))
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("localstripe did not start") from None
            time.sleep(0.1)
    server = FakeStripeServer(localstripe, free_port())
    yield server
    server.stop()
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def stripe_online(settings, fake_stripe):
    """Billing online against the fake Stripe: the settings a deployment sets."""
    settings.STRIPE_SECRET_KEY = "sk_test_suite"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = fake_stripe.url
    fake_stripe.reset()
    return fake_stripe


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def owner(db):
    """A membership: a user who owns an organization on the free plan."""
    return MembershipFactory()


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner.user)
    return client
