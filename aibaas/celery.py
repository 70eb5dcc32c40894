"""The Celery app; settings come from Django's, namespace CELERY_ (aibaas/settings/services.py)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")

app = Celery("aibaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
