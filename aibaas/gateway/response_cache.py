"""The response cache: opt-in per model (ModelSpec.response_cache_ttl > 0).

Identical non-stream chat requests with temperature 0 (and n absent or 1) from the same
organization are answered from the Django cache for the model's TTL. The key is the sha256 of
the organization id, the model and the canonical JSON of the body; the entry holds the body and
the usage, so a hit is recorded as cached usage with the same token counts.
"""

import hashlib
import json
from typing import Any

from django.core.cache import cache

from aibaas.gateway.providers.base import ModelSpec, ProviderResult, Usage

PREFIX = "gw:rc:"


def cacheable(spec: ModelSpec, body: dict[str, Any]) -> bool:
    return (
        spec.response_cache_ttl > 0
        and not body.get("stream")
        and body.get("temperature") == 0
        and body.get("n") in (None, 1)
    )


def cache_key(organization_id: int, model: str, body: dict[str, Any]) -> str:
    # Only temperature 0 is cached, and 0, 0.0 and -0.0 ask for the same thing.
    body = {**body, "temperature": 0}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{organization_id}\0{model}\0{canonical}".encode()).hexdigest()
    return PREFIX + digest


async def aget(key: str) -> tuple[dict[str, Any], Usage] | None:
    entry = await cache.aget(key)
    if entry is None:
        return None
    return entry["body"], Usage(*entry["usage"])


async def aset(key: str, result: ProviderResult, ttl: int) -> None:
    usage = result.usage
    entry = {
        "body": result.body,
        "usage": [usage.input_tokens, usage.output_tokens, usage.estimated],
    }
    await cache.aset(key, entry, ttl)
