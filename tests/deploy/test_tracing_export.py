"""Tracing as deployed: the production command (gunicorn, 2 workers) and a Celery worker, with
OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP receiver (tests/otlp_receiver.py, as
Jaeger or Tempo would listen). Each process sets tracing up itself (the app as a worker loads
it, the Celery pool process on worker_process_init) and exports over OTLP: a /v1 chat through
the openai SDK arrives as one trace named by the response's X-Trace-Id, a Django request and a
Celery task as spans of their own services."""

import os
import signal
import subprocess
import sys
import uuid
from contextlib import suppress

import httpx
import openai
import pytest
from celery import Celery

from accounts.actors import Actor
from aibaas.gateway.models import AIModel
from keys.services import api_key_create
from tests import servers
from tests.factories import AIModelFactory, MembershipFactory
from tests.otlp_receiver import OtlpReceiver
from tests.servers import ROOT, production_server

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

TASK = "billing.subscriptions.tasks.expire_grace_periods"


@pytest.fixture
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


def otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    # A short batch delay: the spans leave within the test's patience, not 5 s.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


def test_a_v1_request_through_the_production_server_is_exported_as_one_trace(receiver):
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)
    organization = MembershipFactory().organization
    raw = api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="traced"
    ).raw_key
    env = {**otel_env(receiver, "aibaas-web"), "LOG_LEVEL": "WARNING"}
    with production_server(workers=2, extra_env=env) as server:
        client = openai.OpenAI(api_key=raw, base_url=f"{server.url}/v1", max_retries=0)
        response = client.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hi"}]
        )
        trace_id = response.headers["x-trace-id"]
        django = httpx.get(f"{server.url}/api/keys", headers={"Authorization": f"Bearer {raw}"})
        names = {"keys.verify", "metering.admit", "gateway.upstream", "metering.usage_emit"}

        def whole_trace(spans) -> bool:
            return names <= {s.name for s in spans if s.trace_id == trace_id}

        spans = receiver.wait_for(whole_trace)
        receiver.wait_for(lambda spans: any("api/keys" in s.name for s in spans))
    assert response.status_code == 200 and django.status_code in (401, 403)
    assert receiver.paths == {"/v1/traces"}
    trace = [s for s in spans if s.trace_id == trace_id]
    [root] = [s for s in trace if s.name == "POST /v1/chat/completions"]
    assert root.parent_id == "" and root.service == "aibaas-web"
    assert root.attributes["http.response.status_code"] == 200
    for span in trace:
        if span.name in names:
            assert span.parent_id == root.span_id, span.name


def test_a_celery_worker_exports_the_spans_of_its_tasks(receiver, tmp_path):
    broker = os.environ["REDIS_URL"]
    env = {
        **os.environ,
        **otel_env(receiver, "aibaas-worker"),
        "DATABASE_URL": servers.test_database_url(),
        "CELERY_BROKER_URL": broker,
    }
    log = tmp_path / "worker.log"
    # A queue of this test's own: nothing another test left in the broker runs here, and
    # nothing of this test's is left for another.
    queue = f"tracing-{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "celery", "-A", "aibaas", "worker", "--concurrency", "1"]
    command += ["--queues", queue]
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*command, "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Not the current app: tasks this process runs later (eagerly) must not go to Redis.
        sender = Celery(broker=broker, set_as_current=False)
        sender.send_task(TASK, queue=queue)
        sender.close()
        spans = receiver.wait_for(
            lambda spans: any(s.name == f"run/{TASK}" for s in spans), timeout=60
        )
    except AssertionError:
        raise AssertionError(log.read_text(errors="replace")) from None
    finally:
        with suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    [run] = [s for s in spans if s.name == f"run/{TASK}"]
    assert run.service == "aibaas-worker"
    assert run.attributes["celery.task_name"] == TASK
