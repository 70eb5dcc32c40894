"""The Celery side: the beat entry exists exactly when there is a broker, the task is registered,
and a real worker with beat drains the usage stream into the database on its own."""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from metering.models import UsageEvent
from tests.metering.conftest import emit, make_event
from tests.redis_server import redis_process, redis_server_available
from tests.servers import ROOT
from tests.servers import test_database_url as database_url

BEAT = (
    "import django, json; django.setup(); from django.conf import settings; "
    "from aibaas.celery import app; app.loader.import_default_modules(); "
    "print(json.dumps({'beat': settings.CELERY_BEAT_SCHEDULE, "
    "'registered': sorted(t for t in app.tasks if not t.startswith('celery.'))}))"
)


def settings_in_a_fresh_process(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    environ.update(DJANGO_SETTINGS_MODULE="aibaas.settings", **env)
    result = subprocess.run(
        [sys.executable, "-c", BEAT], env=environ, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_with_a_broker_beat_drains_usage_every_two_seconds():
    found = settings_in_a_fresh_process(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert found["beat"]["metering-drain-usage-events"] == {
        "task": "metering.tasks.drain_usage_events",
        "schedule": 2.0,
        "options": {"expires": 10},
    }
    assert "metering.tasks.drain_usage_events" in found["registered"]


def test_with_a_broker_beat_expires_billing_grace_periods_hourly():
    found = settings_in_a_fresh_process(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert found["beat"]["billing-expire-grace-periods"] == {
        "task": "billing.subscriptions.tasks.expire_grace_periods",
        "schedule": 3600.0,
        "options": {"expires": 600},
    }
    assert "billing.subscriptions.tasks.expire_grace_periods" in found["registered"]
    assert found["beat"]["billing-report-usage-to-stripe"]["schedule"] == 300.0
    assert "billing.subscriptions.tasks.send_meter_report" in found["registered"]


def test_without_a_broker_there_is_no_beat_schedule():
    assert settings_in_a_fresh_process()["beat"] == {}


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_with_beat_drains_emitted_events(settings, make_key, org):
    if not redis_server_available():
        pytest.skip("needs the redis-server binary for a private broker")
    issued = make_key(org)
    with redis_process() as server, tempfile.TemporaryDirectory() as workdir:
        settings.REDIS_URL = settings.CELERY_BROKER_URL = server.url
        env = dict(
            os.environ,
            DATABASE_URL=database_url(),
            REDIS_URL=server.url,
            CELERY_BROKER_URL=server.url,
            DJANGO_SETTINGS_MODULE="aibaas.settings",
        )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "aibaas",
                "worker",
                "-B",
                "--pool=solo",
                "--loglevel=WARNING",
                f"--schedule={workdir}/beat-schedule",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            events = [make_event(issued) for _ in range(20)]
            for event in events:
                emit(event)
            assert UsageEvent.objects.count() == 0  # in the stream, not written by the request
            deadline = time.monotonic() + 60
            while UsageEvent.objects.count() < len(events):
                assert worker.poll() is None, worker.stdout.read()
                assert time.monotonic() < deadline, "the worker did not drain the stream"
                time.sleep(0.1)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    stored = set(UsageEvent.objects.values_list("request_id", flat=True))
    assert stored == {event.request_id for event in events}
