"""Reads of the model registry. The /v1 hot path goes through registry.py, not here."""

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from aibaas.gateway.models import AIModel, ProviderKind, Upstream
from aibaas.gateway.providers.base import ModelSpec, UpstreamSpec


def ai_model_usable_list() -> QuerySet[AIModel]:
    """Enabled models that can answer: demo ones, and openai_compatible ones with at least one
    enabled upstream. Their enabled upstreams are prefetched (as `enabled_upstreams`)."""
    enabled_upstreams = Upstream.objects.filter(enabled=True).order_by("id")
    has_upstream = Exists(enabled_upstreams.filter(model=OuterRef("pk")))
    return (
        AIModel.objects.filter(enabled=True)
        .filter(
            Q(provider=ProviderKind.DEMO)
            | (Q(provider=ProviderKind.OPENAI_COMPATIBLE) & Q(has_upstream))
        )
        .prefetch_related(Prefetch("upstreams", enabled_upstreams, to_attr="enabled_upstreams"))
        .order_by("name")
    )


def upstream_spec_from(upstream: Upstream) -> UpstreamSpec:
    return UpstreamSpec(
        base_url=upstream.base_url,
        upstream_model=upstream.upstream_model,
        api_key_env=upstream.api_key_env,
        weight=upstream.weight,
        timeout_seconds=upstream.timeout_seconds,
        connect_timeout_seconds=upstream.connect_timeout_seconds,
    )


def model_spec_from(model: AIModel) -> ModelSpec:
    upstreams = tuple(
        upstream_spec_from(upstream)
        for upstream in getattr(model, "enabled_upstreams", ())
        if model.provider != ProviderKind.DEMO
    )
    return ModelSpec(
        name=model.name,
        kind=model.kind,
        provider=model.provider,
        context_window=model.context_window,
        test_mode_allowed=model.test_mode_allowed,
        response_cache_ttl=model.response_cache_ttl,
        upstreams=upstreams,
        embedding_dimensions=model.embedding_dimensions,
    )


def model_spec_map() -> dict[str, ModelSpec]:
    """{public name: ModelSpec} of every usable model, in name order (two queries)."""
    return {model.name: model_spec_from(model) for model in ai_model_usable_list()}
