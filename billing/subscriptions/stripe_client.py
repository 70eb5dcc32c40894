"""The one module that talks to Stripe: thin typed calls on the official `stripe` library.

Settings are read per call (cheap), so STRIPE_API_BASE can point the library at a local fake
Stripe. `StripeError` subclasses are left to the callers: a service decides what a failure means.
"""

from typing import Any

import stripe
from django.conf import settings

StripeError = stripe.StripeError
SignatureVerificationError = stripe.SignatureVerificationError
InvalidRequestError = stripe.InvalidRequestError

# Network errors and 5xx answers are retried by the library with the same Idempotency-Key.
MAX_NETWORK_RETRIES = 2


def enabled() -> bool:
    """Billing is online only with a secret key; without one nothing here is called."""
    return bool(settings.STRIPE_SECRET_KEY)


def webhook_secret_set() -> bool:
    return bool(settings.STRIPE_WEBHOOK_SECRET)


def client() -> stripe.StripeClient:
    base = settings.STRIPE_API_BASE or None
    addresses = {"api": base, "meter_events": base} if base else {}
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses=addresses,  # type: ignore[arg-type]
        max_network_retries=MAX_NETWORK_RETRIES,
    )


def webhook_event(*, payload: bytes, signature: str) -> stripe.Event:
    """Verify Stripe's signature (STRIPE_WEBHOOK_SECRET, 300 s tolerance) and parse the event.
    Raises SignatureVerificationError or ValueError."""
    return stripe.Webhook.construct_event(
        payload,
        signature,
        settings.STRIPE_WEBHOOK_SECRET,
        tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
    )


# --- Products, Prices, Meters (stripe_sync) ---------------------------------------------------


def product_retrieve(product_id: str) -> stripe.Product | None:
    try:
        return client().v1.products.retrieve(product_id)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404:
            return None
        raise


def product_create(*, product_id: str, name: str, metadata: dict[str, str]) -> stripe.Product:
    return client().v1.products.create(
        {"id": product_id, "name": name, "metadata": metadata},
        {"idempotency_key": f"product-create-{product_id}"},
    )


def product_update(product_id: str, *, name: str) -> stripe.Product:
    return client().v1.products.update(product_id, {"name": name})


def prices_by_lookup_keys(lookup_keys: list[str]) -> dict[str, stripe.Price]:
    prices = client().v1.prices.list({"lookup_keys": lookup_keys, "active": True, "limit": 100})
    return {price.lookup_key: price for price in prices.data if price.lookup_key}


def price_create(params: dict[str, Any]) -> stripe.Price:
    return client().v1.prices.create(params)  # type: ignore[arg-type]


def meters_active() -> list[stripe.billing.Meter]:
    return list(client().v1.billing.meters.list({"status": "active", "limit": 100}).data)


def meter_id_for(event_name: str) -> str | None:
    """The id of the active meter that counts `event_name`, if any."""
    return next((m.id for m in meters_active() if m.event_name == event_name), None)


def meter_create(*, display_name: str, event_name: str) -> stripe.billing.Meter:
    return client().v1.billing.meters.create(
        {
            "display_name": display_name,
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        },
        {"idempotency_key": f"meter-create-{event_name}"},
    )


# --- Customers, Checkout, Portal, Subscriptions -----------------------------------------------


def customer_create(
    *, name: str, metadata: dict[str, str], idempotency_key: str
) -> stripe.Customer:
    return client().v1.customers.create(
        {"name": name, "metadata": metadata}, {"idempotency_key": idempotency_key}
    )


def checkout_session_create(params: dict[str, Any]) -> stripe.checkout.Session:
    return client().v1.checkout.sessions.create(params)  # type: ignore[arg-type]


def portal_session_create(*, customer: str, return_url: str) -> stripe.billing_portal.Session:
    return client().v1.billing_portal.sessions.create(
        {"customer": customer, "return_url": return_url}
    )


def subscription_retrieve(subscription_id: str) -> stripe.Subscription:
    return client().v1.subscriptions.retrieve(subscription_id)


def subscription_update(subscription_id: str, params: dict[str, Any]) -> stripe.Subscription:
    return client().v1.subscriptions.update(subscription_id, params)  # type: ignore[arg-type]


def subscription_list(*, customer: str) -> list[stripe.Subscription]:
    return list(
        client().v1.subscriptions.list({"customer": customer, "status": "all", "limit": 10}).data
    )


# --- Metered usage ------------------------------------------------------------------------------


def meter_event_create(
    *, event_name: str, identifier: str, customer: str, value: int, timestamp: int
) -> stripe.billing.MeterEvent:
    """One Billing Meter event. The identifier doubles as the Idempotency-Key: a retry of a
    request Stripe already took gets Stripe's first answer back, not a second event."""
    return client().v1.billing.meter_events.create(
        {
            "event_name": event_name,
            "identifier": identifier,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        },
        {"idempotency_key": identifier},
    )


def meter_received_by_hour(
    *, meter_id: str, customer: str, start: int, end: int
) -> dict[int, float]:
    """{hour's start (Unix time): value} the meter received from `customer` in [start, end)
    (both on the hour), from Stripe's event summaries grouped by hour; hours without events are
    absent."""
    summaries = client().v1.billing.meters.event_summaries.list(
        meter_id,
        {
            "customer": customer,
            "start_time": start,
            "end_time": end,
            "value_grouping_window": "hour",
            "limit": 100,
        },
    )
    return {s.start_time: s.aggregated_value for s in summaries.auto_paging_iter()}


def invoices_recent(*, customer: str, limit: int = 12) -> list[stripe.Invoice]:
    return list(client().v1.invoices.list({"customer": customer, "limit": limit}).data)


def card_on_file(*, customer: str) -> stripe.PaymentMethod | None:
    cards = client().v1.payment_methods.list({"customer": customer, "type": "card", "limit": 1})
    return cards.data[0] if cards.data else None


def subscription_cancel(subscription_id: str) -> stripe.Subscription:
    """End the subscription now (not at period end)."""
    return client().v1.subscriptions.cancel(subscription_id)
