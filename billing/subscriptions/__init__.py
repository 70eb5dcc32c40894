"""Stripe billing: plans synced to Stripe Products and Prices, Checkout and the Customer Portal,
webhooks that move an organization's plan with its subscription, and metered usage.

The top billing layer: it may import accounts, keys, metering and infra; none of them imports it.
Only `stripe_client` imports the `stripe` library.
"""
