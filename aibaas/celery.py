"""The Celery app; settings come from Django's, namespace CELERY_ (aibaas/settings/services.py)."""

import os

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_failure,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from infra import tracing
from infra.logs import protect_handlers, use_format

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")

app = Celery("aibaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_keys(logger, **kwargs) -> None:
    """Celery replaces the logging Django set up: its handlers redact keys too, and write the
    LOG_FORMAT Django's do."""
    from django.conf import settings

    use_format(settings.LOG_FORMAT, logger)
    protect_handlers(logger)


@task_failure.connect
def _count_failure(sender=None, **kwargs) -> None:
    """aibaas_celery_task_failures (infra/metrics.py), by the task's registered name."""
    from infra import metrics

    metrics.CELERY_TASK_FAILURES.labels(getattr(sender, "name", None) or "unknown").inc()


@worker_init.connect
def _clear_metrics(**kwargs) -> None:
    """The value files a previous run left in PROMETHEUS_MULTIPROC_DIR go (infra/metrics.py)."""
    from infra import metrics

    metrics.clear_dead_files()


@worker_process_init.connect
def _start_tracing(**kwargs) -> None:
    """Each pool process traces its tasks (infra/tracing.py; off unless configured): set up
    after the fork, so that the exporter's thread is the process's own."""
    tracing.setup()


@worker_process_shutdown.connect
def _flush_traces(**kwargs) -> None:
    tracing.shutdown()  # a pool process exits without the SDK's exit hook
