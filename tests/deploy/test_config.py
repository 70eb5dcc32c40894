"""The production configuration's start-up rules (fresh interpreters: settings are read once)."""

import subprocess
import sys
from pathlib import Path

import pytest

from aibaas.settings.env import BASE_DIR
from infra.proxies import TrustedProxies, parse_proxies
from tests.aibaas.test_settings import production_env, run_python

SETUP = "import django; django.setup(); from django.conf import settings"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1", "it used to be a number of proxies"),
        ("*", "0.0.0.0/0,::/0 trusts every peer"),
        ("10.0.0.1/8", "is not one"),  # host bits set: a typo, not a network
        ("proxy.internal", "is not one"),
    ],
)
def test_a_client_ip_proxies_value_that_is_not_networks_refuses_to_start(value, hint):
    result = run_python(["-c", SETUP], production_env(CLIENT_IP_PROXIES=value))
    assert result.returncode != 0
    assert "ImproperlyConfigured: CLIENT_IP_PROXIES must be" in result.stderr
    assert hint in result.stderr


def test_the_old_header_setting_refuses_to_start_instead_of_trusting_a_header():
    result = run_python(["-c", SETUP], production_env(RATELIMIT_IP_META_KEY="HTTP_X_FORWARDED_FOR"))
    assert result.returncode != 0
    assert "RATELIMIT_IP_META_KEY is no longer read" in result.stderr


def test_client_ip_proxies_are_read_as_canonical_networks_and_default_to_nobody():
    code = f"{SETUP}; print(settings.CLIENT_IP_PROXIES)"
    default = run_python(["-c", code], production_env(CLIENT_IP_PROXIES=None))
    assert default.stdout.strip() == "[]", default.stderr
    given = run_python(["-c", code], production_env(CLIENT_IP_PROXIES=" 10.0.0.0/8, ::1 ,"))
    assert given.stdout.strip() == "['10.0.0.0/8', '::1/128']", given.stderr


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.5", "10.9.9.9", "203.0.113.5"),  # not our proxy: its header is ignored
        ("10.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),
        ("10.0.0.1", "203.0.113.7, 10.0.0.3", "203.0.113.7"),  # past our inner proxy
        ("::ffff:10.0.0.1", "203.0.113.7", "203.0.113.7"),  # IPv4 peer on a dual-stack socket
        ("10.0.0.1", "", "10.0.0.1"),
    ],
)
def test_trusted_proxies_read_x_forwarded_for_from_the_right(peer, forwarded_for, expected):
    proxies = TrustedProxies(parse_proxies("10.0.0.0/8"))
    assert proxies.client(peer, forwarded_for) == expected


POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/aibaas_settings_only"


def test_postgresql_connections_come_from_a_bounded_pool_and_are_never_kept():
    database = "settings.DATABASES['default']"
    code = f"{SETUP}; d = {database}; print(d['CONN_MAX_AGE'], d['OPTIONS']['pool'])"
    result = run_python(
        ["-c", code],
        production_env(DATABASE_URL=POSTGRES_URL, DB_POOL_MAX_SIZE="5", DB_POOL_TIMEOUT="3"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "0 {'min_size': 1, 'max_size': 5, 'timeout': 3.0, 'max_idle': 300.0}"
    )


def test_the_old_persistent_connection_setting_refuses_to_start():
    result = run_python(
        ["-c", SETUP], production_env(DATABASE_URL=POSTGRES_URL, DB_CONN_MAX_AGE="60")
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: DB_CONN_MAX_AGE is no longer read" in result.stderr


@pytest.mark.parametrize(("low", "high"), [("0", "0"), ("5", "4"), ("-1", "4")])
def test_an_impossible_pool_size_refuses_to_start(low, high):
    env = production_env(DATABASE_URL=POSTGRES_URL, DB_POOL_MIN_SIZE=low, DB_POOL_MAX_SIZE=high)
    result = run_python(["-c", SETUP], env)
    assert result.returncode != 0
    assert "DB_POOL_MAX_SIZE must be at least 1" in result.stderr


def test_the_deploy_check_is_clean_with_everything_production_sets():
    env = production_env(
        DATABASE_URL=POSTGRES_URL,
        REDIS_URL="redis://127.0.0.1:6379/15",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
        ALLOWED_HOSTS="api.example.com",
        CSRF_TRUSTED_ORIGINS="https://api.example.com",
        CLIENT_IP_PROXIES="10.0.0.0/8",
        METRICS_TOKEN="a-long-random-operator-token-0b6c1d",
        METRICS_ALLOWED_NETWORKS="10.0.0.0/8",
        DB_POOL_MAX_SIZE="6",
    )
    result = run_python(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def _gunicorn(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "gunicorn"), "-c", "deploy/gunicorn.conf.py"]
    return subprocess.run(
        [*command, *args, "aibaas.asgi:application"],
        env=production_env(**env),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _printed(config: str) -> dict[str, str]:
    return dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition("=") for line in config.splitlines())
        if value
    )


def test_the_production_config_trusts_no_forwarded_header_by_default():
    printed = _printed(_gunicorn("--print-config", CLIENT_IP_PROXIES=None).stdout)
    assert printed["forwarded_allow_ips"] == "[]"
    assert printed["worker_class"] == "aibaas.appserver.Worker"
    assert printed["logger_class"] == "aibaas.appserver.RedactingLogger"
    configured = _gunicorn("--print-config", CLIENT_IP_PROXIES="10.0.0.0/8, 127.0.0.1").stdout
    assert _printed(configured)["forwarded_allow_ips"] == "['10.0.0.0/8', '127.0.0.1/32']"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HTTP_HEADER_TIMEOUT", "abc", "HTTP_HEADER_TIMEOUT must be a number of seconds"),
        ("HTTP_BODY_TIMEOUT", "0", "HTTP_BODY_TIMEOUT must be more than 0 seconds"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1"),
        ("CLIENT_IP_PROXIES", "2", "it used to be a number of proxies"),
    ],
)
def test_the_production_config_refuses_a_bad_value_with_its_name(variable, value, message):
    result = _gunicorn("--check-config", **{variable: value})
    assert result.returncode != 0
    assert message in result.stderr
