"""Writes of metering (DESIGN.md: services): usage events into the table (metering/usage/), the
monthly quota's operator reset (metering/quota/)."""

from metering.quota import quota_reset
from metering.usage import GROUP, usage_drain, usage_record

__all__ = ["GROUP", "quota_reset", "usage_drain", "usage_record"]
