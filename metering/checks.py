"""System checks of the metering settings: a mistyped limit setting stops the server at start
(`manage.py check`, every management command, the server's boot), not at the first request."""

from django.conf import settings
from django.core.checks import Error, register

from metering.ip_limit import parse_rate


@register()
def check_limit_settings(app_configs=None, **kwargs) -> list[Error]:
    errors = []
    try:
        parse_rate(settings.GATEWAY_IP_RATE)
    except ValueError as error:
        errors.append(
            Error(
                f"GATEWAY_IP_RATE: {error}",
                hint='A rate such as "6000/m" or "100/10s", or "" to turn the per-IP layer off.',
                id="metering.E001",
            )
        )
    for name in ("QUOTA_DB_CONNECTIONS", "QUOTA_LEASE_REQUESTS"):
        if getattr(settings, name) < 1:
            errors.append(Error(f"{name} must be at least 1.", id="metering.E002"))
    if settings.QUOTA_DB_TIMEOUT_SECONDS <= 0:
        errors.append(Error("QUOTA_DB_TIMEOUT_SECONDS must be positive.", id="metering.E003"))
    return errors
