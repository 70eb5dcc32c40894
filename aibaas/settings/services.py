"""Backing services: database, cache/Redis, Celery, email. Each switches on with its variable."""

from django.core.exceptions import ImproperlyConfigured

from .env import BASE_DIR, env

# --- Database: SQLite file in the repository unless DATABASE_URL says otherwise.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Connections come from one psycopg pool per process (Django's, at most DB_POOL_MAX_SIZE),
    # so no request mix or thread can open more; each is returned when its request or task ends
    # (CONN_MAX_AGE 0). README "Database connections" gives a deployment's total.
    if "DB_CONN_MAX_AGE" in env:
        raise ImproperlyConfigured(
            "DB_CONN_MAX_AGE is no longer read: PostgreSQL connections come from a pool "
            "(DB_POOL_MIN_SIZE, DB_POOL_MAX_SIZE, DB_POOL_TIMEOUT; README, Database connections). "
            "Unset it."
        )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DB_POOL_MIN_SIZE = env.int("DB_POOL_MIN_SIZE", default=1)
    DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=8)
    if not 0 <= DB_POOL_MIN_SIZE <= DB_POOL_MAX_SIZE or DB_POOL_MAX_SIZE < 1:
        raise ImproperlyConfigured(
            "DB_POOL_MAX_SIZE must be at least 1 and DB_POOL_MIN_SIZE from 0 to DB_POOL_MAX_SIZE."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": DB_POOL_MIN_SIZE,
        "max_size": DB_POOL_MAX_SIZE,
        # Seconds a request waits for a free connection before it fails.
        "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
        # Idle connections above min_size are closed after this many seconds.
        "max_idle": env.float("DB_POOL_MAX_IDLE", default=300.0),
    }
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    # Several test threads and the dev server write to one file: wait instead of failing.
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 20)
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")

# --- Redis: one REDIS_URL drives the cache (and the limiter later); each may be overridden.
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_URL = env.str("CACHE_URL", default=REDIS_URL)

if CACHE_URL:
    CACHES = {
        "default": {
            # django-redis, falling back to an in-process cache while Redis is unreachable.
            "BACKEND": "infra.cache.FailoverRedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="aibaas"),
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": env.float("REDIS_CONNECT_TIMEOUT", default=0.5),
                "SOCKET_TIMEOUT": env.float("REDIS_SOCKET_TIMEOUT", default=0.5),
                "FALLBACK_MAX_TTL": env.float("CACHE_FALLBACK_MAX_TTL", default=10.0),
            },
        }
    }
    # django-ratelimit knows django-redis by name only; this backend is django-redis underneath.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "aibaas-default",
        }
    }
    # django-ratelimit warns that an in-process cache is not shared between processes; that is
    # the documented trade-off of the embedded default (one process), not a misconfiguration.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

# Sessions live in the database (the truth), so a cache flush never logs anyone out.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Celery: no CELERY_BROKER_URL means tasks run eagerly, in process.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Periodic tasks (one `celery -A aibaas beat` per deployment), only when there is a broker.
# The usage drain moves /v1 usage events from the Redis stream into PostgreSQL
# (metering/usage/drain.py);
# an entry expires unrun after 10 s so a stopped worker does not come back to a pile of drains.
CELERY_BEAT_SCHEDULE = (
    {
        "metering-drain-usage-events": {
            "task": "metering.tasks.drain_usage_events",
            "schedule": 2.0,
            "options": {"expires": 10},
        },
        # Past-due subscriptions whose grace period ran out go to the free plan.
        "billing-expire-grace-periods": {
            "task": "billing.subscriptions.tasks.expire_grace_periods",
            "schedule": 3600.0,
            "options": {"expires": 600},
        },
        # Closed organizations' subscriptions whose cancellation at Stripe failed: retried.
        "billing-cancel-owed-subscriptions": {
            "task": "billing.subscriptions.tasks.cancel_owed_subscriptions",
            "schedule": 300.0,
            "options": {"expires": 240},
        },
        # Metered usage to Stripe: closed hours into the outbox, due rows sent.
        "billing-report-usage-to-stripe": {
            "task": "billing.subscriptions.tasks.report_usage_to_stripe",
            "schedule": 300.0,
            "options": {"expires": 240},
        },
    }
    if CELERY_BROKER_URL
    else {}
)

# --- Stripe (billing/subscriptions/). No STRIPE_SECRET_KEY: billing is offline (plans are set by
# operators, nothing calls Stripe). STRIPE_API_BASE points the stripe library elsewhere (a local
# fake Stripe in the tests; empty: Stripe's own). Past-due subscriptions keep their plan for
# BILLING_GRACE_DAYS after the first failed payment, then fall back to the free plan.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300
BILLING_GRACE_DAYS = env.float("BILLING_GRACE_DAYS", default=7.0)
# An hour of usage is reported to Stripe's meter this long after it ends (usage events reach the
# database within seconds; later ones show up in `manage.py stripe_reconcile_usage`).
BILLING_METER_SETTLE_SECONDS = env.int("BILLING_METER_SETTLE_SECONDS", default=300)

# --- Email: console backend unless EMAIL_URL is set (smtp://user:pass@host:587/?tls=True).
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST", "")
EMAIL_PORT = _email.get("EMAIL_PORT", 25) or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="aibaas <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

__all__ = [name for name in dir() if name.isupper()]
