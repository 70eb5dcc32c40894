"""Writes of metering (DESIGN.md: services). usage.py: usage events into the table, with their
quota settlement; drain.py: the Redis stream of usage events into the table."""

from metering.services.drain import GROUP, usage_drain
from metering.services.usage import usage_record

__all__ = ["GROUP", "usage_drain", "usage_record"]
