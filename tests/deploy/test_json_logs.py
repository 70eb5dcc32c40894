"""Structured logs: the production command writes one JSON object per line (LOG_FORMAT's
default with DEBUG off), each /v1 request one line with its request id, organization, key id,
model, status and latency; keys stay redacted in JSON too. Plain lines under DEBUG."""

import json
import logging
import time

import httpx
import pytest

from aibaas.gateway.models import AIModel
from infra.logs import JsonFormatter, RedactKeys, log_format
from tests.aibaas.test_settings import production_env, run_python
from tests.deploy.test_logs import KEY_SHAPED, _raw_key
from tests.factories import AIModelFactory
from tests.servers import production_server


def json_lines(output: str) -> list[dict]:
    """Every line of `output` as JSON (a line that is not fails the test)."""
    lines = []
    for line in output.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON log line: {line!r}")
    return lines


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_v1_request_is_one_json_log_line_with_its_fields():
    if not AIModel.objects.filter(name="demo-chat").exists():
        AIModelFactory(name="demo-chat", test_mode_allowed=True)
    raw = _raw_key()
    key_id = raw.split("_")[2]
    env = {"ACCESS_LOG": "-", "LOG_FORMAT": None}  # DEBUG is off: JSON by default
    with (
        production_server(workers=1, extra_env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        served = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {raw}"},
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}]},
        )
        refused = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {raw}"},
            json={"model": raw, "messages": [{"role": "user", "content": raw}]},
        )
        anonymous = client.get("/v1/models")
        time.sleep(0.5)  # the last lines written
        output = server.output()
    assert (served.status_code, refused.status_code, anonymous.status_code) == (200, 404, 401)
    lines = json_lines(output)
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    requests = {line["request_id"]: line for line in lines if line["logger"] == "aibaas.requests"}

    line = requests[served.headers["X-Request-ID"]]
    organization = line["organization"]
    assert organization and organization != "None"
    assert line["key_id"] == key_id
    assert (line["model"], line["status"], line["method"], line["path"]) == (
        "demo-chat",
        200,
        "POST",
        "/v1/chat/completions",
    )
    assert 0 < line["latency_ms"] < 30_000
    assert line["level"] == "INFO"

    line = requests[refused.headers["X-Request-ID"]]
    assert (line["status"], line["model"], line["key_id"]) == (404, "[redacted key]", key_id)
    line = requests[anonymous.headers["X-Request-ID"]]
    assert (line["status"], line["organization"], line["key_id"]) == (401, None, None)

    assert any("GET /v1/models HTTP/1.1" in line["message"] for line in lines)  # access log
    assert KEY_SHAPED.findall(output) == [], output


def test_json_lines_redact_keys_in_messages_tracebacks_and_extra_fields():
    raw = "sk_live_abcdefghijkl_0123456789abcdef"
    try:
        raise ValueError(f"bad key {raw}")
    except ValueError as error:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "key %s", (raw,), None)
        record.exc_info = (type(error), error, error.__traceback__)
    record.api_key = raw  # an extra field: the filter never sees it
    RedactKeys().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "key [redacted key]"
    assert line["exc_info"].endswith("ValueError: bad key [redacted key]")
    assert line["api_key"] == "[redacted key]"
    assert KEY_SHAPED.findall(json.dumps(line)) == []


def test_the_plain_python_json_logger_would_leak_the_traceback():
    """Why JsonFormatter redacts its own output: the library formats exc_info again."""
    from pythonjsonlogger.json import JsonFormatter as LibraryFormatter

    raw = "sk_live_abcdefghijkl_0123456789abcdef"
    try:
        raise ValueError(raw)
    except ValueError as error:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", (), None)
        record.exc_info = (type(error), error, error.__traceback__)
    RedactKeys().filter(record)
    assert raw in LibraryFormatter().format(record)
    assert raw not in JsonFormatter().format(record)


LOG_SOMETHING = (
    "import django, logging; django.setup(); "
    "logging.getLogger('aibaas.requests').warning('key %s', 'sk_live_abcdefghijkl_0123456789')"
)


@pytest.mark.parametrize(
    ("overrides", "is_json"),
    [
        ({"LOG_FORMAT": None}, True),
        ({"LOG_FORMAT": None, "DEBUG": "True"}, False),  # make run
        ({"LOG_FORMAT": "plain"}, False),
        ({"LOG_FORMAT": "JSON", "DEBUG": "True"}, True),
    ],
)
def test_log_format_defaults_to_json_without_debug_and_plain_with_it(overrides, is_json):
    result = run_python(["-c", LOG_SOMETHING], production_env(**overrides))
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    if is_json:
        assert json.loads(line)["message"] == "key [redacted key]"
    else:
        assert line.endswith(" WARNING aibaas.requests key [redacted key]")


def test_an_unknown_log_format_refuses_to_start():
    result = run_python(["-c", LOG_SOMETHING], production_env(LOG_FORMAT="xml"))
    assert result.returncode != 0
    assert "LOG_FORMAT must be 'json' or 'plain', not 'xml'." in result.stderr
    with pytest.raises(ValueError):
        log_format("text", debug=False)


def test_celery_workers_write_json_lines_too():
    """What `celery -A aibaas worker` does to logging (app.log.setup), then two lines logged."""
    code = (
        "import django; django.setup(); import logging; from aibaas.celery import app; "
        "app.log.setup(loglevel='INFO'); "
        "logging.getLogger('metering').warning('key %s', 'sk_live_abcdefghijkl_0123456789'); "
        "app.log.get_default_logger().warning('drained')"
    )
    result = run_python(["-c", code], production_env(LOG_FORMAT=None))
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout + result.stderr)
    assert [(line["level"], line["message"]) for line in lines] == [
        ("WARNING", "key [redacted key]"),
        ("WARNING", "drained"),
    ]
