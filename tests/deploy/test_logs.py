"""No log line can hold an API key: the production command's own logs (gunicorn's error and
access logs, uvicorn's, the app's) for requests that put keys everywhere a client can."""

import logging
import re
import time

import httpx
import pytest

from accounts.actors import Actor
from aibaas.gateway.models import AIModel
from billing.models import Plan
from infra.logs import RedactKeys
from keys.services import api_key_create
from tests.aibaas.test_settings import production_env, run_python
from tests.factories import AIModelFactory, MembershipFactory
from tests.servers import production_server

KEY_SHAPED = re.compile(r"sk(_|%5f)(live|test)(_|%5f)[0-9a-z]{3,}", re.IGNORECASE)


@pytest.fixture
def chat_model(db):
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)


def _raw_key(**options) -> str:
    plan = Plan.objects.create(slug=f"t{time.monotonic_ns()}", name="test")
    owner = MembershipFactory()
    owner.organization.plan = plan
    owner.organization.save()
    return api_key_create(
        organization=owner.organization, name="logged", actor=Actor.for_system("t"), **options
    ).raw_key


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_keys_sent_anywhere_never_reach_the_production_logs(chat_model):
    live, test = _raw_key(), _raw_key(test_mode=True)
    encoded = live.replace("_", "%5F")
    env = {"LOG_LEVEL": "DEBUG", "ACCESS_LOG": "-"}
    with (
        production_server(workers=1, extra_env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        client.get(f"/v1/models?api_key={live}")
        client.get(f"/v1/models?key={encoded}&x=1")
        client.get(f"/v1/models/{live}", headers={"Authorization": f"Bearer {test}"})
        client.post(
            "/v1/chat/completions",
            headers={"X-API-Key": live},
            json={"model": live, "messages": [{"role": "user", "content": live}]},
        )
        client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {live[:-3]}"})
        client.get(f"/dashboard/{test}/?next={live}")
        client.get(f"/api/keys/{live}", headers={"Authorization": f"Bearer {live}"})
        client.get("/healthz", headers={"User-Agent": live, "X-Forwarded-For": live})
        time.sleep(0.5)  # the last lines written
        output = server.output()
    assert "GET /v1/models HTTP/1.1" in output  # the access log is on, without its query
    assert "/dashboard/[redacted key]/" in output  # the app's "Not Found" warning, redacted
    assert KEY_SHAPED.findall(output) == [], output


def test_every_handler_of_the_app_redacts_keys():
    """Every handler that writes anywhere after Django's logging configuration (its own
    console, mail_admins and django.server included) carries the filter: checked in a fresh
    interpreter. (Libraries' NullHandlers write nothing.)"""
    code = (
        "import django, logging; django.setup(); from infra.logs import RedactKeys; "
        "loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]; "
        "handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]; "
        "bare = [h for h in handlers if not isinstance(h, logging.NullHandler) "
        "and not any(isinstance(f, RedactKeys) for f in h.filters)]; "
        "print(len(handlers), bare)"
    )
    result = run_python(["-c", code], production_env())
    assert result.returncode == 0, result.stderr
    count, bare = result.stdout.strip().split(" ", 1)
    assert int(count) >= 3
    assert bare == "[]"


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ("key %s", ("sk_live_abcdefghijkl_0123456789",)),
        ("GET /v1/models?api_key=sk_test_abcdefghijkl_012 HTTP/1.1", ()),
        ("%s", ("sk%5Flive%5Fabcdefghijkl",)),
    ],
)
def test_the_filter_redacts_messages_arguments_and_tracebacks(message, args):
    try:
        raise ValueError(f"bad key {args[0] if args else message}")
    except ValueError as error:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, args, None)
        record.exc_info = (type(error), error, error.__traceback__)
    RedactKeys().filter(record)
    text = logging.Formatter().format(record)
    assert "[redacted key]" in text
    assert KEY_SHAPED.findall(text) == []


def test_celery_workers_logging_redacts_keys_too():
    """What `celery -A aibaas worker` does to logging (app.log.setup), then a key logged."""
    code = (
        "import django; django.setup(); import logging; from aibaas.celery import app; "
        "app.log.setup(loglevel='INFO'); "
        "logging.getLogger('metering').warning('key %s', 'sk_live_abcdefghijkl_0123456789'); "
        "app.log.get_default_logger().warning('sk_test_abcdefghijkl_0123456789')"
    )
    result = run_python(["-c", code], production_env())
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("[redacted key]") == 2, output
    assert KEY_SHAPED.findall(output) == []


def test_uvicorns_access_lines_survive_the_filter_under_make_run():
    """`make run` is plain uvicorn: its access formatter unpacks the record's args (client,
    method, path, version, status). The filter keeps them, each redacted, instead of leaving
    None behind ("TypeError: cannot unpack non-iterable NoneType" printed for every request)."""
    from uvicorn.logging import AccessFormatter

    formatter = AccessFormatter(fmt="%(client_addr)s %(request_line)s %(status_code)s")
    key = "sk_live_abcdefghijkl_0123456789"
    for path, logged in (
        (f"/v1/models?api_key={key}", "/v1/models?api_key=[redacted key]"),
        ("/healthz", "/healthz"),
    ):
        args = ("127.0.0.1:5000", "GET", path, "1.1", 200)
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
        )
        RedactKeys().filter(record)
        assert formatter.format(record) == f"127.0.0.1:5000 GET {logged} HTTP/1.1 200 OK"
