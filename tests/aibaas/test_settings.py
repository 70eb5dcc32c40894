"""Settings are read once per process, so the start-up rules are tested in fresh interpreters."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from aibaas.settings.env import BASE_DIR
from aibaas.settings.security import DEV_SECRET_KEY

STRONG_SECRET_KEY = "Zq8-vN3xR_t7LmW2pK9yB4cH6jD1fG5sA0eU8iO3rT7wQ2nM5bV9xC4zL6kJ1hY3gF"
# tests/env_defaults.py relaxes these for plain-HTTP test servers; production must not be.
RELAXED_FOR_TESTS = (
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "STATIC_MANIFEST",
)
SETUP = "import django; django.setup()"


def production_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment with production defaults: DEBUG off, no relaxed security."""
    env = {k: v for k, v in os.environ.items() if k not in RELAXED_FOR_TESTS}
    env.update(DJANGO_SETTINGS_MODULE="aibaas.settings", DEBUG="False")
    env["SECRET_KEY"] = STRONG_SECRET_KEY
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("secret_key", "message"),
    [
        (None, "SECRET_KEY is not set"),
        ("", "SECRET_KEY is not set"),
        (DEV_SECRET_KEY, "SECRET_KEY is the public development key"),
        ("django-insecure-" + STRONG_SECRET_KEY, "SECRET_KEY is the public development key"),
        ("short-but-random-Kx81", "SECRET_KEY is too short or too simple"),
        ("ab" * 40, "SECRET_KEY is too short or too simple"),
    ],
    ids=["unset", "empty", "dev-key", "django-insecure", "short", "simple"],
)
def test_without_debug_a_missing_or_weak_secret_key_refuses_to_start(secret_key, message):
    result = run_python(["-c", SETUP], production_env(SECRET_KEY=secret_key))

    assert result.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_with_debug_and_no_secret_key_it_starts_on_the_development_key():
    code = f"{SETUP}; from django.conf import settings; print(settings.SECRET_KEY)"
    result = run_python(["-c", code], production_env(DEBUG="True", SECRET_KEY=None))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEV_SECRET_KEY


def test_with_a_strong_secret_key_and_default_security_the_deploy_check_is_clean():
    result = run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"SECURE_SSL_REDIRECT": "False"}, "security.W008"),
        ({"SESSION_COOKIE_SECURE": "False"}, "security.W012"),
        ({"SECURE_HSTS_SECONDS": "0"}, "security.W004"),
    ],
)
def test_the_deploy_check_catches_a_relaxed_production_setting(overrides, check_id):
    # The clean result above means something only if the check can fail on this project.
    result = run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env(**overrides)
    )
    assert result.returncode != 0
    assert check_id in result.stderr + result.stdout


@pytest.mark.django_db
def test_backing_services_follow_the_environment():
    """DATABASE_URL/REDIS_URL set: PostgreSQL and Redis; unset: SQLite and in-process cache."""
    backend = settings.CACHES["default"]["BACKEND"]
    if os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql")):
        assert connection.vendor == "postgresql"
    else:
        assert connection.vendor == "sqlite"
    if os.environ.get("REDIS_URL") or os.environ.get("CACHE_URL"):
        assert backend == "infra.cache.FailoverRedisCache"  # django-redis with a fallback
        assert cache.primary.client.get_client().ping()
        assert not cache.degraded
    else:
        assert backend == "django.core.cache.backends.locmem.LocMemCache"
    cache.set("settings-probe", "here", 5)
    assert cache.get("settings-probe") == "here"
    if os.environ.get("REDIS_URL") or os.environ.get("CACHE_URL"):
        assert not cache.degraded  # the value really went through Redis


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "(50000, 20, 100) True"),
        ("20000,10,50", "(20000, 10, 50) True"),
        ("", "(700, 10, 10) 0"),
    ],
    ids=["default", "set", "off"],
)
def test_the_asgi_server_process_tunes_garbage_collection(value, expected):
    code = "import gc, aibaas.asgi; print(gc.get_threshold(), gc.get_freeze_count() > 0 or 0)"
    result = run_python(["-c", code], production_env(GC_THRESHOLDS=value))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("value", ["lots", "50000,20,100,7", "0"])
def test_bad_garbage_collector_thresholds_stop_the_start_with_a_clear_error(value):
    result = run_python(["-c", SETUP], production_env(GC_THRESHOLDS=value))
    assert result.returncode != 0
    assert "GC_THRESHOLDS must be" in result.stderr
