"""Celery tasks of metering. They take plain arguments and call a service."""

import logging

from celery import shared_task

from metering.usage import usage_drain, usage_reap

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def drain_usage_events(batch_size: int = 500) -> int:
    """Record the requests of dead serving processes as interrupted (usage_reap), then move the
    usage stream into the database. Run by Celery beat every 2 s (setting CELERY_BEAT_SCHEDULE),
    so no retry: a failed run is followed by the next one, and entries it read but did not ack
    are reclaimed then. Overlapping runs share the work safely."""
    try:
        usage_reap()
    except Exception:
        logger.exception("usage reaper failed; the next drain retries")
    return usage_drain(batch_size=batch_size)
