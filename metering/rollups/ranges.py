"""The dashboard's date ranges: a preset (or custom days) to [start, end) and a granularity."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from metering.models import UsageRollup
from metering.rollups.buckets import DAY, HOUR, floor

PRESETS = {
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "month": "This month",
}
CUSTOM = "custom"
DEFAULT = "7d"
# A custom range of at most this many days is drawn by hour.
HOURLY_DAYS = 2
MAX_CUSTOM_DAYS = 366


@dataclass(frozen=True)
class Range:
    preset: str
    start: datetime
    end: datetime
    granularity: str

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last day the range touches (its end is exclusive)."""
        return (self.end - timedelta(microseconds=1)).date()


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text or "")
    except ValueError:
        return None


def resolve(preset: str | None, start: str | None, end: str | None, now: datetime) -> Range:
    """The range a request asks for; anything unreadable falls back to the default preset. A
    custom range is whole UTC days, from `start` to `end` inclusive."""
    today = floor(now, UsageRollup.DAY)
    if preset == CUSTOM:
        first, last = _day(start), _day(end)
        if first and last and first <= last and (last - first).days < MAX_CUSTOM_DAYS:
            span = (last - first).days + 1
            begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
            granularity = UsageRollup.HOUR if span <= HOURLY_DAYS else UsageRollup.DAY
            return Range(CUSTOM, begin, begin + span * DAY, granularity)
        preset = DEFAULT
    if preset == "24h":
        this_hour = floor(now, UsageRollup.HOUR)
        return Range(preset, this_hour - 23 * HOUR, this_hour + HOUR, UsageRollup.HOUR)
    if preset == "30d":
        return Range(preset, today - 29 * DAY, today + DAY, UsageRollup.DAY)
    if preset == "month":
        return Range(preset, today.replace(day=1), today + DAY, UsageRollup.DAY)
    return Range(DEFAULT, today - 6 * DAY, today + DAY, UsageRollup.DAY)
