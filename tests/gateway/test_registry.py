"""The per-process model registry: no SQL when warm, invalidation, key filtering, async reads.

Async code runs under asgiref's `async_to_sync`, as Django runs it: thread-sensitive ORM calls
come back to this (the test's) thread and its database transaction.
"""

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from aibaas.gateway import registry
from aibaas.gateway.models import AIModel, ModelKind, ProviderKind
from aibaas.gateway.providers import provider_for
from aibaas.gateway.providers.demo import DemoProvider
from aibaas.gateway.services import model_registry_invalidate, model_seed_demo
from infra.snapshots import ProcessSnapshot
from tests.factories import AIModelFactory, UpstreamFactory
from tests.gateway.conftest import key_context

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(db):
    """Two demo models (test mode allowed), a remote one, and three that are not usable."""
    model_seed_demo()
    UpstreamFactory(model__name="llama", upstream_model="meta-llama/Llama-3.1-8B-Instruct")
    UpstreamFactory(model__name="no-live-upstream", enabled=False)
    AIModelFactory(name="remote-without-upstreams", provider=ProviderKind.OPENAI_COMPATIBLE)
    AIModelFactory(name="switched-off", enabled=False)


def names(specs) -> list[str]:
    return [spec.name for spec in specs]


def test_the_registry_holds_only_usable_models(catalog):
    assert names(registry.model_specs()) == ["demo-chat", "demo-embed", "llama"]
    assert registry.model_spec("switched-off") is None
    assert registry.model_spec("no-live-upstream") is None
    assert registry.model_spec("remote-without-upstreams") is None
    assert registry.model_spec("nope") is None


def test_a_spec_carries_what_the_gateway_needs(catalog):
    chat = registry.model_spec("demo-chat")
    assert (chat.kind, chat.provider, chat.context_window) == ("chat", "demo", 8192)
    assert chat.test_mode_allowed and chat.upstreams == ()
    assert registry.model_spec("demo-embed").embedding_dimensions == 256
    llama = registry.model_spec("llama")
    assert llama.provider == "openai_compatible" and not llama.test_mode_allowed
    (upstream,) = llama.upstreams
    assert upstream.upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (upstream.api_key_env, upstream.weight) == ("UPSTREAM_API_KEY", 1)
    assert (upstream.timeout_seconds, upstream.connect_timeout_seconds) == (30.0, 2.0)


def test_disabled_upstreams_are_left_out_of_a_spec(catalog):
    model = AIModel.objects.get(name="llama")
    UpstreamFactory(model=model, enabled=False, base_url="http://down:1/v1")
    model_registry_invalidate()
    assert [u.base_url for u in registry.model_spec("llama").upstreams] == [
        model.upstreams.get(enabled=True).base_url
    ]


def test_a_warm_lookup_makes_no_sql_query(catalog, django_assert_num_queries):
    with django_assert_num_queries(2):  # the models, their upstreams
        registry.model_spec("demo-chat")

    with django_assert_num_queries(0):
        for _ in range(100):
            assert registry.model_spec("demo-chat") is not None
            assert registry.model_spec("nope") is None
        registry.model_specs()
        registry.models_for_key(key_context())


def test_a_warm_async_lookup_makes_no_sql_query(catalog, django_assert_num_queries):
    async def lookups():
        assert (await registry.amodel_spec("llama")).name == "llama"
        assert names(await registry.amodel_specs()) == ["demo-chat", "demo-embed", "llama"]
        assert names(await registry.amodels_for_key(key_context(test_mode=True))) == [
            "demo-chat",
            "demo-embed",
        ]

    async_to_sync(lookups)()  # cold: loads once
    with django_assert_num_queries(0):
        async_to_sync(lookups)()


def test_concurrent_cold_async_lookups_share_one_load(catalog, django_assert_num_queries):
    async def many():
        return await asyncio.gather(*(registry.amodel_spec("demo-chat") for _ in range(50)))

    with django_assert_num_queries(2):
        specs = async_to_sync(many)()
    assert {spec.name for spec in specs} == {"demo-chat"}


def test_service_writes_invalidate_at_once(catalog):
    assert registry.model_spec("demo-chat").context_window == 8192
    AIModel.objects.filter(name="demo-chat").update(context_window=4096)
    assert registry.model_spec("demo-chat").context_window == 8192  # cached, by design

    model_registry_invalidate()

    assert registry.model_spec("demo-chat").context_window == 4096


def test_invalidation_also_runs_after_commit(catalog, django_capture_on_commit_callbacks):
    registry.model_specs()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        model_registry_invalidate()
    registry.model_specs()  # reloaded; a racing reload could have read the old rows
    AIModel.objects.filter(name="demo-chat").update(enabled=False)

    for callback in callbacks:
        callback()

    assert registry.model_spec("demo-chat") is None


def test_the_snapshot_expires_after_registry_ttl(catalog, settings):
    settings.REGISTRY_TTL = 0
    registry.model_specs()
    AIModel.objects.filter(name="demo-chat").update(enabled=False)
    assert registry.model_spec("demo-chat") is None


# --- models_for_key ---------------------------------------------------------------------------


def test_a_key_without_an_allow_list_sees_every_model(catalog):
    assert names(registry.models_for_key(key_context())) == ["demo-chat", "demo-embed", "llama"]


def test_a_key_with_an_allow_list_sees_only_those_models(catalog):
    context = key_context(models=("llama", "demo-embed", "not-a-model", "switched-off"))
    assert names(registry.models_for_key(context)) == ["demo-embed", "llama"]


def test_a_test_mode_key_sees_only_test_mode_demo_models(catalog):
    assert names(registry.models_for_key(key_context(test_mode=True))) == [
        "demo-chat",
        "demo-embed",
    ]
    restricted = key_context(test_mode=True, models=("demo-chat", "llama"))
    assert names(registry.models_for_key(restricted)) == ["demo-chat"]


def test_a_demo_model_without_test_mode_is_closed_to_test_keys(catalog):
    AIModel.objects.filter(name="demo-embed").update(test_mode_allowed=False)
    model_registry_invalidate()
    assert names(registry.models_for_key(key_context(test_mode=True))) == ["demo-chat"]


def test_key_may_use(catalog):
    llama = registry.model_spec("llama")
    assert registry.key_may_use(key_context(), llama)
    assert not registry.key_may_use(key_context(test_mode=True), llama)
    assert not registry.key_may_use(key_context(models=("demo-chat",)), llama)


# --- providers --------------------------------------------------------------------------------


def test_each_spec_gets_its_provider(catalog):
    demo = provider_for(registry.model_spec("demo-chat"))
    assert isinstance(demo, DemoProvider)
    assert provider_for(registry.model_spec("demo-embed")) is demo
    remote = provider_for(registry.model_spec("llama"))
    assert type(remote).__name__ == "OpenAICompatibleProvider"


def test_an_unknown_provider_kind_is_an_error():
    spec = registry.ModelSpec("x", ModelKind.CHAT, "carrier-pigeon", 1, False, 0)
    with pytest.raises(ValueError, match="carrier-pigeon"):
        provider_for(spec)


# --- ProcessSnapshot, the mechanism ----------------------------------------------------------


class Source:
    """A loader that counts its calls, can fail, and can be held mid-load."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = "v1"
        self.fail = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> str:
        self.calls += 1
        self.entered.set()
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("database down")
        return self.value


def test_a_snapshot_loads_once_until_invalidated():
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    assert [snapshot.get() for _ in range(5)] == ["v1"] * 5
    assert source.calls == 1
    source.value = "v2"
    snapshot.invalidate()
    assert snapshot.get() == "v2"
    assert source.calls == 2


def test_a_failed_refresh_serves_the_previous_value_and_retries_later(caplog):
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 0)
    assert snapshot.get() == "v1"
    source.fail = True

    assert snapshot.get() == "v1"
    assert "refresh failed" in caplog.text
    calls = source.calls
    assert snapshot.get() == "v1"
    assert source.calls == calls  # not retried at once: REFRESH_RETRY_SECONDS later


def test_a_failed_first_load_raises_and_the_next_read_retries():
    source = Source()
    source.fail = True
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    with pytest.raises(RuntimeError):
        snapshot.get()
    source.fail = False
    assert snapshot.get() == "v1"


def test_a_load_that_raced_an_invalidation_is_not_kept_as_fresh():
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    source.release.clear()
    reader = threading.Thread(target=snapshot.get)
    reader.start()
    assert source.entered.wait(5)
    snapshot.invalidate()  # a write committed while the load was reading
    source.release.set()
    reader.join(5)

    source.value = "v2"
    assert snapshot.get() == "v2"
    assert source.calls == 2


def test_threads_share_one_refresh():
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    source.release.clear()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(snapshot.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert source.entered.wait(5)
    source.release.set()
    for thread in threads:
        thread.join(5)
    assert results == ["v1"] * 8
    assert source.calls == 1


def test_a_cancelled_async_reader_does_not_strand_the_others():
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    source.release.clear()

    async def scenario():
        first = asyncio.ensure_future(snapshot.aget())
        second = asyncio.ensure_future(snapshot.aget())
        await asyncio.to_thread(source.entered.wait, 5)
        first.cancel()  # the client of the first request hung up
        source.release.set()
        return await second, first.cancelled()

    assert asyncio.run(scenario()) == ("v1", True)
    assert snapshot.get() == "v1"
    assert source.calls == 1


def test_an_event_loop_shutting_down_mid_refresh_does_not_strand_later_readers():
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    source.release.clear()

    async def scenario():
        reader = asyncio.ensure_future(snapshot.aget())
        await asyncio.to_thread(source.entered.wait, 5)
        return reader  # returning cancels the refresh task while its load is still running

    release = threading.Timer(0.2, source.release.set)
    release.start()
    asyncio.run(scenario())

    assert snapshot.get() == "v1"
    release.join()


def test_an_aged_value_is_served_at_once_while_one_refresh_runs_behind_it():
    """A burst of requests never waits for the TTL's refresh (measured: ~20 ms each time)."""
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 0.2)
    assert snapshot.get() == "v1"
    time.sleep(0.25)  # aged past its TTL, by less than another TTL
    source.value = "v2"
    source.entered.clear()
    source.release.clear()  # the refresh hangs in the database

    async def burst():
        values = await asyncio.gather(*(snapshot.aget() for _ in range(50)))
        refreshing = await asyncio.to_thread(source.entered.wait, 5)
        calls = source.calls  # the load still hangs: no second one can start
        source.release.set()
        for _ in range(500):
            if await snapshot.aget() == "v2":
                break
            await asyncio.sleep(0.01)
        return values, refreshing, calls, await snapshot.aget()

    values, refreshing, calls, after = asyncio.run(burst())
    assert values == ["v1"] * 50  # nobody waited for the hung load
    assert refreshing and calls == 2  # one refresh for the whole burst
    assert after == "v2"


def test_a_value_older_than_two_ttls_is_waited_for():
    """A process idle for a while (or a price changed long ago) is not served what it had:
    a change reaches the next request after an idle TTL, never an old snapshot."""
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 0.1)
    assert snapshot.get() == "v1"
    source.value = "v2"
    time.sleep(0.25)
    assert asyncio.run(snapshot.aget()) == "v2"


def test_an_invalidated_value_is_waited_for_by_async_readers():
    """A change made in this process is seen by its next request, not one TTL later."""
    source = Source()
    snapshot = ProcessSnapshot("test", source, lambda: 60)
    assert snapshot.get() == "v1"
    source.value = "v2"
    snapshot.invalidate()
    assert asyncio.run(snapshot.aget()) == "v2"
    source.value = "v3"  # fresh for 60 s now: no reload
    assert asyncio.run(snapshot.aget()) == "v2"
