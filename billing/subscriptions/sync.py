"""Plans ↔ Stripe: each paid plan is a Stripe Product with a recurring monthly Price and, when the
plan has a metered price, a metered Price on the shared token Billing Meter.

Found by stable names, so a re-run never duplicates: the Product by its id (`aibaas_<slug>`),
Prices by lookup key, the Meter by its event name. Stripe Prices are immutable: a changed amount
is a new Price that takes over the lookup key (`transfer_lookup_key`).
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from billing.models import Plan
from billing.subscriptions import stripe_client

CURRENCY = "usd"
METER_EVENT_NAME = "aibaas_tokens"
TOKENS_PER_UNIT = 1_000_000  # metered prices are per million tokens


def product_id(plan: Plan) -> str:
    return f"aibaas_{plan.slug}"


def monthly_lookup_key(plan: Plan) -> str:
    return f"aibaas_{plan.slug}_monthly"


def metered_lookup_key(plan: Plan) -> str:
    return f"aibaas_{plan.slug}_tokens"


@dataclass(frozen=True, slots=True)
class SyncChange:
    plan: str
    what: str  # product, monthly price, metered price, meter
    action: str  # created, replaced, linked, unchanged
    stripe_id: str

    def __str__(self) -> str:
        return f"{self.plan}: {self.what} {self.stripe_id} {self.action}"


def _cents(dollars: Decimal) -> int:
    return int((dollars * 100).to_integral_value())


def _paid_plans() -> list[Plan]:
    # Free costs nothing and a custom (empty) price is negotiated: neither is sold on Stripe.
    return [p for p in Plan.objects.all() if p.monthly_price is not None and p.monthly_price > 0]


def _meter(changes: list[SyncChange]) -> str:
    for meter in stripe_client.meters_active():
        if meter.event_name == METER_EVENT_NAME:
            changes.append(SyncChange("*", "meter", "linked", meter.id))
            return meter.id
    meter = stripe_client.meter_create(display_name="aibaas tokens", event_name=METER_EVENT_NAME)
    changes.append(SyncChange("*", "meter", "created", meter.id))
    return meter.id


def _product(plan: Plan, changes: list[SyncChange]) -> str:
    wanted = product_id(plan)
    product = stripe_client.product_retrieve(wanted)
    if product is None:
        product = stripe_client.product_create(
            product_id=wanted, name=f"aibaas {plan.name}", metadata={"plan": plan.slug}
        )
        changes.append(SyncChange(plan.slug, "product", "created", product.id))
    elif product.name != f"aibaas {plan.name}":
        product = stripe_client.product_update(wanted, name=f"aibaas {plan.name}")
        changes.append(SyncChange(plan.slug, "product", "renamed", product.id))
    else:
        changes.append(SyncChange(plan.slug, "product", "unchanged", product.id))
    return product.id


def _price(
    plan: Plan,
    existing: dict,
    changes: list[SyncChange],
    *,
    what: str,
    lookup_key: str,
    params: dict,
    same,
) -> str:
    price = existing.get(lookup_key)
    if price is not None and same(price):
        changes.append(SyncChange(plan.slug, what, "unchanged", price.id))
        return price.id
    created = stripe_client.price_create(
        {
            **params,
            "currency": CURRENCY,
            "lookup_key": lookup_key,
            "transfer_lookup_key": price is not None,
            "metadata": {"plan": plan.slug},
        }
    )
    changes.append(SyncChange(plan.slug, what, "replaced" if price else "created", created.id))
    return created.id


def plans_sync_to_stripe() -> list[SyncChange]:
    """Create or link every paid plan's Product and Prices (and the token Meter when a plan has a
    metered price), store their ids on the plans, and return what was found or changed."""
    changes: list[SyncChange] = []
    plans = _paid_plans()
    meter_id = _meter(changes) if any(p.metered_price_per_million_tokens for p in plans) else ""
    keys = [monthly_lookup_key(p) for p in plans] + [metered_lookup_key(p) for p in plans]
    existing = stripe_client.prices_by_lookup_keys(keys) if keys else {}
    for plan in plans:
        product = _product(plan, changes)
        cents = _cents(plan.monthly_price)
        monthly = _price(
            plan,
            existing,
            changes,
            what="monthly price",
            lookup_key=monthly_lookup_key(plan),
            params={
                "product": product,
                "unit_amount": cents,
                "recurring": {"interval": "month", "usage_type": "licensed"},
            },
            same=lambda p, cents=cents, product=product: (
                p.unit_amount == cents and p.product == product
            ),
        )
        metered = ""
        rate = plan.metered_price_per_million_tokens
        if rate:
            per_unit = (rate * 100).normalize()  # cents per million tokens
            metered = _price(
                plan,
                existing,
                changes,
                what="metered price",
                lookup_key=metered_lookup_key(plan),
                params={
                    "product": product,
                    "unit_amount_decimal": f"{per_unit:f}",
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
                    "transform_quantity": {"divide_by": TOKENS_PER_UNIT, "round": "up"},
                },
                same=lambda p, per_unit=per_unit, product=product: (
                    p.product == product
                    and Decimal(str(p.unit_amount_decimal)) == per_unit
                    and p.recurring.meter == meter_id
                ),
            )
        with transaction.atomic():
            Plan.objects.filter(pk=plan.pk).update(
                stripe_product_id=product,
                stripe_price_id=monthly,
                stripe_metered_price_id=metered,
                stripe_meter_id=meter_id if metered else "",
            )
    return changes
