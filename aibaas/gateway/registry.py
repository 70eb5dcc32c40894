"""The model registry as the /v1 hot path sees it: a per-process snapshot, no SQL per request.

All usable models (enabled; openai_compatible ones with at least one enabled upstream) are read
in one query into an immutable dict of `ModelSpec`s, kept for REGISTRY_TTL seconds
(`infra.snapshots.ProcessSnapshot`). Saves through the services and the admin invalidate this
process's snapshot at once; other processes see a change within two TTLs at worst.
"""

from django.conf import settings

from aibaas.gateway.providers.base import ModelSpec
from infra.snapshots import ProcessSnapshot


def _load_specs() -> dict[str, ModelSpec]:
    from aibaas.gateway.selectors import model_spec_map

    return model_spec_map()


def registry_ttl() -> float:
    return settings.REGISTRY_TTL


_registry: ProcessSnapshot[dict[str, ModelSpec]] = ProcessSnapshot(
    "model registry", _load_specs, registry_ttl
)


def model_spec(name: str) -> ModelSpec | None:
    """The usable model called `name`, or None (unknown, disabled, or without upstreams)."""
    return _registry.get().get(name)


def model_specs() -> list[ModelSpec]:
    """Every usable model, by name."""
    return list(_registry.get().values())


async def amodel_spec(name: str) -> ModelSpec | None:
    return (await _registry.aget()).get(name)


async def amodel_specs() -> list[ModelSpec]:
    return list((await _registry.aget()).values())


def key_may_use(context, spec: ModelSpec) -> bool:
    """May the key (a keys.context.KeyContext) call this model?

    Its model allow-list must name it (no list: every model), and a test-mode key reaches only
    test-mode-allowed demo models (test keys are never billed).
    """
    if not context.allows_model(spec.name):
        return False
    if context.test_mode:
        return spec.test_mode_allowed and spec.provider == "demo"
    return True


def models_for_key(context) -> list[ModelSpec]:
    """The models a key may use, for /v1/models."""
    return [spec for spec in model_specs() if key_may_use(context, spec)]


async def amodels_for_key(context) -> list[ModelSpec]:
    return [spec for spec in await amodel_specs() if key_may_use(context, spec)]


def invalidate() -> None:
    """Make this process reload the registry on its next read."""
    _registry.invalidate()


def clear() -> None:
    """Drop this process's snapshot (tests)."""
    _registry.clear()
