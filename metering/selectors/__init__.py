"""Reads of metering (DESIGN.md: selectors). usage.py: usage events summed (GET /v1/usage,
usage_report, the dashboard); limits.py: what remains of the limits and the quota;
reconciliation.py: the quota counters against the usage events (reconcile_usage)."""

from metering.selectors.limits import (
    BURST_LIMITS,
    QUOTA_LIMITS,
    WINDOW_LIMITS,
    key_limit_status,
    key_rate_limit_headers,
    key_windows,
    organization_limit_overview,
    organization_month_counters,
)
from metering.selectors.reconciliation import usage_reconcile
from metering.selectors.usage import (
    INVALID_MONTH_MESSAGE,
    MONTH_PATTERN,
    MONTH_REGEX,
    month_period,
    usage_summary,
    usage_totals,
)

__all__ = [
    "BURST_LIMITS",
    "INVALID_MONTH_MESSAGE",
    "MONTH_PATTERN",
    "MONTH_REGEX",
    "QUOTA_LIMITS",
    "WINDOW_LIMITS",
    "key_limit_status",
    "key_rate_limit_headers",
    "key_windows",
    "month_period",
    "organization_limit_overview",
    "organization_month_counters",
    "usage_reconcile",
    "usage_summary",
    "usage_totals",
]
