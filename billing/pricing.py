"""The cost of a request, from `ModelPrice`, with no SQL on the /v1 hot path.

Prices are read in one query into a per-process snapshot (the registry's `ProcessSnapshot`),
kept PRICING_TTL seconds (5 s) and invalidated at once by saves through the admin and the
gateway services.

cost = (input_tokens * input price + output_tokens * output price) / 1,000,000 USD, as a
Decimal quantized to 8 places (ROUND_HALF_UP). A request served from the response cache
(`cached=True`) pays `cached_input_per_million` for its input tokens when the model has one
(else the normal input price) and the normal output price, as OpenAI bills cached input.
A model without a price costs 0 (logged once per process and model: it is money not billed).
"""

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from infra.snapshots import ProcessSnapshot

logger = logging.getLogger(__name__)

# Money has 8 places wherever it is computed, stored (decimal_places=8) or shown.
COST_QUANTUM = Decimal("0.00000001")
ZERO_COST = Decimal(0).quantize(COST_QUANTUM)
MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None


def _load_prices() -> dict[str, Price]:
    from billing.models import ModelPrice

    rows = ModelPrice.objects.values_list(
        "model__name", "input_per_million", "output_per_million", "cached_input_per_million"
    )
    return {name: Price(inp, out, cached) for name, inp, out, cached in rows}


def pricing_ttl() -> float:
    return settings.PRICING_TTL


_prices: ProcessSnapshot[dict[str, Price]] = ProcessSnapshot(
    "price list", _load_prices, pricing_ttl
)
_unpriced_warned: set[str] = set()


def compute_cost(
    price: Price | None, *, input_tokens: int, output_tokens: int, cached: bool = False
) -> Decimal:
    """The pure arithmetic of the module docstring."""
    if price is None:
        return ZERO_COST
    input_rate = price.input_per_million
    if cached and price.cached_input_per_million is not None:
        input_rate = price.cached_input_per_million
    total = Decimal(input_tokens) * input_rate + Decimal(output_tokens) * price.output_per_million
    return (total / MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def _price_or_warn(prices: dict[str, Price], model: str) -> Price | None:
    price = prices.get(model)
    if price is None and model not in _unpriced_warned and len(_unpriced_warned) < 1000:
        _unpriced_warned.add(model)
        logger.warning("Model %r has no price: its requests cost 0", model)
    return price


def price_for(model: str) -> Price | None:
    return _prices.get().get(model)


def cost_for(*, model: str, input_tokens: int, output_tokens: int, cached: bool = False) -> Decimal:
    """The cost in USD of one request to the public model `model` (0 if it has no price)."""
    price = _price_or_warn(_prices.get(), model)
    return compute_cost(
        price, input_tokens=input_tokens, output_tokens=output_tokens, cached=cached
    )


async def acost_for(
    *, model: str, input_tokens: int, output_tokens: int, cached: bool = False
) -> Decimal:
    """`cost_for` for async views: never blocks the event loop."""
    price = _price_or_warn(await _prices.aget(), model)
    return compute_cost(
        price, input_tokens=input_tokens, output_tokens=output_tokens, cached=cached
    )


def invalidate() -> None:
    """Make this process reload prices on its next read."""
    _prices.invalidate()


def clear() -> None:
    """Drop this process's snapshot (tests)."""
    _prices.clear()
    _unpriced_warned.clear()
