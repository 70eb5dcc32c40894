"""The /v1 path: API key verification, the gateway, rate limits and quotas, usage events."""

from django.core.exceptions import ImproperlyConfigured

from .env import env

# --- API keys (keys/hashing.py). argon2id parameters: OWASP's minimum (19 MiB, t=2, p=1).
# The secret in a key has 256 bits, so argon2 guards the database copy, not a guessable
# password; the memory bound and concurrency limit keep it from becoming a DoS lever.
API_KEY_ARGON2 = {
    "time_cost": env.int("API_KEY_ARGON2_TIME_COST", default=2),
    "memory_cost": env.int("API_KEY_ARGON2_MEMORY_KIB", default=19 * 1024),
    "parallelism": 1,
}
API_KEY_ARGON2_MAX_CONCURRENCY = env.int("API_KEY_ARGON2_MAX_CONCURRENCY", default=2)
API_KEY_ARGON2_WAIT_SECONDS = env.float("API_KEY_ARGON2_WAIT_SECONDS", default=5.0)
# Server-side secret for the cached HMAC verifiers (default: derived from SECRET_KEY).
API_KEY_PEPPER = env.str("API_KEY_PEPPER", default="")
# Cache lifetimes: the verifier (saves argon2) and the authorization context (saves SQL).
API_KEY_VERIFIER_TTL = env.int("API_KEY_VERIFIER_TTL", default=30 * 24 * 3600)
API_KEY_CONTEXT_TTL = env.int("API_KEY_CONTEXT_TTL", default=60)
# The per-process layer on top of the cache; bounds how stale another instance can be.
API_KEY_LOCAL_TTL = env.float("API_KEY_LOCAL_TTL", default=0.5)
# Every serving process polls the key change log this often (keys/changes.py): a change made by
# any process (another instance, manage.py) reaches its caches within about this much time.
API_KEY_CHANGE_POLL_SECONDS = env.float("API_KEY_CHANGE_POLL_SECONDS", default=0.5)
# How long change rows are kept (far longer than API_KEY_CONTEXT_TTL: a process that missed
# pruned rows holds nothing older than that).
API_KEY_CHANGE_RETENTION = env.int("API_KEY_CHANGE_RETENTION", default=600)
# Wrong secrets for one key id that may run argon2 per minute before they are refused cheaply.
API_KEY_MAX_FAILED_VERIFICATIONS = env.int("API_KEY_MAX_FAILED_VERIFICATIONS", default=10)
# last_used_at / last_used_ip are written at most this often per key.
API_KEY_TOUCH_INTERVAL = env.int("API_KEY_TOUCH_INTERVAL", default=60)
API_KEY_DEFAULT_ROTATION_GRACE = env.int("API_KEY_DEFAULT_ROTATION_GRACE", default=24 * 3600)

# --- Gateway: how long a process keeps its copy of the model registry and prices, and the
# per-token delay of the built-in demo models.
REGISTRY_TTL = env.float("REGISTRY_TTL", default=5.0)
PRICING_TTL = env.float("PRICING_TTL", default=5.0)
DEMO_TOKEN_DELAY_SECONDS = env.float("DEMO_TOKEN_DELAY_SECONDS", default=0.0)
# Largest accepted /v1 request body (413 above it).
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=1024 * 1024)

# Garbage collector thresholds of the ASGI server processes (aibaas/asgi.py explains; measured).
# Empty: Python's defaults, nothing frozen.
try:
    GC_THRESHOLDS = env.list("GC_THRESHOLDS", cast=int, default=[50_000, 20, 100])
except ValueError as _error:
    raise ImproperlyConfigured(
        f"GC_THRESHOLDS must be up to 3 whole numbers like 50000,20,100 (or empty): {_error}"
    ) from None
if len(GC_THRESHOLDS) > 3 or any(value < 1 for value in GC_THRESHOLDS):
    raise ImproperlyConfigured("GC_THRESHOLDS must be 1 to 3 numbers of at least 1, or empty.")

# --- Limits (metering/admission.py, metering/limiter/, metering/quota/).
# Per client IP in front of the per-key limits, for /v1 inference (django-ratelimit rate;
# "" = off). Generous: it stops one address cycling through many keys, not a busy customer.
GATEWAY_IP_RATE = env.str("GATEWAY_IP_RATE", default="6000/m")
# Output tokens assumed for a chat request without max_tokens, until it is settled.
GATEWAY_OUTPUT_TOKENS_ESTIMATE = env.int("GATEWAY_OUTPUT_TOKENS_ESTIMATE", default=256)
# When the database cannot check the monthly quota: False refuses (503), True admits and logs.
QUOTA_FAIL_OPEN = env.bool("QUOTA_FAIL_OPEN", default=False)
# The quota's own PostgreSQL connections per event loop (metering/quota/batched.py), their
# statement timeout, and whether their statement is prepared (off behind a transaction-mode
# PgBouncer older than 1.21).
QUOTA_DB_CONNECTIONS = env.int("QUOTA_DB_CONNECTIONS", default=4)
QUOTA_DB_TIMEOUT_SECONDS = env.float("QUOTA_DB_TIMEOUT_SECONDS", default=5.0)
QUOTA_DB_PREPARED = env.bool("QUOTA_DB_PREPARED", default=True)
# Quota leases (metering/quota/lease.py): far from its quota, a process reserves up to this many
# requests at once (never more than 1/64 of what remains) and gives back what it did not use
# after this many idle seconds, or this many seconds after its reservation came back even when
# busy.
QUOTA_LEASE_REQUESTS = env.int("QUOTA_LEASE_REQUESTS", default=64)
QUOTA_LEASE_IDLE_SECONDS = env.float("QUOTA_LEASE_IDLE_SECONDS", default=1.0)
QUOTA_LEASE_MAX_AGE_SECONDS = env.float("QUOTA_LEASE_MAX_AGE_SECONDS", default=1.0)
# After a Redis failure, everything that uses Redis (the cache, the rate limiters, the usage
# stream) falls back for this long, then one call tries Redis again (infra/breaker.py).
REDIS_RETRY_SECONDS = env.float("REDIS_RETRY_SECONDS", default=2.0)
# Connections per event loop of the asyncio Redis pool (usage stream, limiter).
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=64)

# --- Usage events: the Redis stream (used when a Celery broker drains it; metering/usage/emit.py),
# never trimmed: an entry leaves it once stored in the database.
USAGE_STREAM_KEY = env.str("USAGE_STREAM_KEY", default="aibaas:{usage}:events")
# A serving process that has not said it is alive for this long is dead: a survivor records its
# in-flight requests as interrupted (metering/usage/inflight.py, metering/usage/reaper.py).
USAGE_INFLIGHT_TTL_SECONDS = env.float("USAGE_INFLIGHT_TTL_SECONDS", default=10.0)
