"""Celery tasks of metering. They take plain arguments and call a service."""

from celery import shared_task

from metering.services import usage_drain


@shared_task(ignore_result=True)
def drain_usage_events(batch_size: int = 500) -> int:
    """Move the usage stream into the database. Run by Celery beat every 2 s (setting
    CELERY_BEAT_SCHEDULE), so no retry: a failed run is followed by the next one, and entries it
    read but did not ack are reclaimed then. Overlapping runs share the work safely."""
    return usage_drain(batch_size=batch_size)
