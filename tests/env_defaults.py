"""Loaded by pytest (`-p tests.env_defaults`) before Django reads its settings.

Tests run with production-like settings (DEBUG off), a throwaway secret and plain-HTTP cookies
for the live-server tests. DATABASE_URL and REDIS_URL come from the caller: unset, the suite
uses SQLite and in-process caches; set, it uses the real services.
"""

import os

# A developer's .env (written by `make run`) must not leak into the tests' settings.
os.environ.setdefault("ENV_FILE", "")
os.environ.setdefault("DEBUG", "False")
os.environ.setdefault(
    "SECRET_KEY", "test-only-secret-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d"
)
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "False")
os.environ.setdefault("SESSION_COOKIE_SECURE", "False")
os.environ.setdefault("CSRF_COOKIE_SECURE", "False")
os.environ.setdefault("SECURE_HSTS_SECONDS", "0")
os.environ.setdefault("STATIC_MANIFEST", "False")
os.environ.setdefault("CACHE_KEY_PREFIX", "aibaas-test")
# Faster password hashing is not used: tests exercise the real argon2 configuration.
# Tracing is off in the suite whatever the shell says; tests/infra/test_tracing.py turns it on.
for _name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
    os.environ.pop(_name, None)
