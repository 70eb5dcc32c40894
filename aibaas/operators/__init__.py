"""The operators' API, /api/admin/orgs: tenant lifecycle for staff users and the operator token.

Wiring: it creates organizations (accounts), their first key (keys), resets quotas (metering)
and refuses plan changes Stripe owns (billing), through those apps' services. Tenant API keys,
whatever their scopes, and users who are not staff get 403 on every route.
"""
