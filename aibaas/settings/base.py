"""Django core: apps, middleware, templates, auth, i18n, static files."""

import ipaddress

from django.core.exceptions import ImproperlyConfigured

from infra.logs import PLAIN_FORMAT, log_format
from infra.proxies import proxies_from_env

from .env import BASE_DIR, ENV_FILE, env  # noqa: F401 (ENV_FILE: the dotenv file read, if any)

DEBUG = env.bool("DEBUG", default=False)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_ratelimit",
    "csp",
    "accounts",
    "keys",
    "metering",
    "billing",
    "billing.subscriptions",
    "aibaas.gateway",
]

MIDDLEWARE = [
    # The HTTP series of /metrics (infra/metrics.py): every answer, short-circuits included.
    "infra.metrics.MetricsMiddleware",
    # 401 key_in_query for a key in an /api or /v1 URL, before anything else sees the request.
    "keys.middleware.key_in_query_middleware",
    # X-Request-ID on every /v1 response; sync and async capable (no thread hop under ASGI).
    "aibaas.gateway.middleware.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",  # Content-Security-Policy (settings/security.py)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
]

ROOT_URLCONF = "aibaas.urls"
WSGI_APPLICATION = "aibaas.wsgi.application"
ASGI_APPLICATION = "aibaas.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.current_organization",
            ],
        },
    },
]

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "accounts:login"

# argon2 first: new and upgraded passwords are hashed with argon2id.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Production runs `collectstatic` and serves hashed, compressed files (STATIC_MANIFEST on);
# `make run` and the tests serve straight from the source folders with no build step.
STATIC_MANIFEST = env.bool("STATIC_MANIFEST", default=not DEBUG)
STATIC_ROOT = BASE_DIR / "staticfiles" if STATIC_MANIFEST else None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=not STATIC_MANIFEST)
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# Login and signup are rate limited per client IP (django-ratelimit). "N/m", "N/h", ...
RATELIMIT_LOGIN = env.str("RATELIMIT_LOGIN", default="10/m")
RATELIMIT_SIGNUP = env.str("RATELIMIT_SIGNUP", default="5/m")
# Invitations sent or resent per dashboard user (django-ratelimit rate): each one is an email.
RATELIMIT_INVITE = env.str("RATELIMIT_INVITE", default="20/h")
# How long an invitation link works after it was (re)sent.
INVITATION_TTL_SECONDS = env.int("INVITATION_TTL_SECONDS", default=7 * 24 * 3600)
RATELIMIT_VIEW = "accounts.views.ratelimited"
# Where client addresses come from (rate limits, audit log, usage events): the socket peer, or
# X-Forwarded-For when the peer is one of CLIENT_IP_PROXIES (networks; empty: trust nobody).
# The same list is the app server's forwarded_allow_ips (deploy/gunicorn.conf.py).
try:
    CLIENT_IP_PROXIES = proxies_from_env()
except ValueError as _error:
    raise ImproperlyConfigured(str(_error)) from None
if env.str("RATELIMIT_IP_META_KEY", default="REMOTE_ADDR") != "REMOTE_ADDR":
    raise ImproperlyConfigured(
        "RATELIMIT_IP_META_KEY is no longer read: X-Forwarded-For is trusted from the peers in "
        "CLIENT_IP_PROXIES (e.g. CLIENT_IP_PROXIES=10.0.0.0/8), and from nobody else."
    )
RATELIMIT_IP_META_KEY = "infra.http.ratelimit_ip"  # django-ratelimit: the same address
# Who may read /metrics and the detail of /readyz (aibaas/health.py): a bearer token and/or
# client networks. Neither set: nobody (/readyz still answers its status to everyone).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# The operators' API (/api/admin/orgs, aibaas/operators/): staff users, and machines sending
# `Authorization: Bearer <OPERATOR_API_TOKEN>`. Empty: only staff users; set: 32+ characters.
OPERATOR_API_TOKEN = env.str("OPERATOR_API_TOKEN", default="")
if OPERATOR_API_TOKEN and (
    len(OPERATOR_API_TOKEN) < 32
    or OPERATOR_API_TOKEN.startswith("sk_")
    or OPERATOR_API_TOKEN.count(".") == 2
):
    raise ImproperlyConfigured(
        "OPERATOR_API_TOKEN must be 32+ characters, not shaped like an API key (sk_...) or a "
        "JWT (a.b.c); or empty. Generate one: python -c 'import secrets; print(secrets."
        "token_urlsafe(32))'."
    )
try:
    METRICS_ALLOWED_NETWORKS = [
        str(ipaddress.ip_network(item.strip()))
        for item in env.list("METRICS_ALLOWED_NETWORKS", default=[])
        if item.strip()
    ]
except ValueError as _error:
    raise ImproperlyConfigured(
        f"METRICS_ALLOWED_NETWORKS must be IP addresses or networks like 10.0.0.0/8: {_error}"
    ) from None
# Per-IP limits count an IPv6 address as its network of this many bits (django-ratelimit's).
RATELIMIT_IPV6_MASK = env.int("RATELIMIT_IPV6_MASK", default=64)
if not 1 <= RATELIMIT_IPV6_MASK <= 128:
    raise ImproperlyConfigured("RATELIMIT_IPV6_MASK must be from 1 to 128.")

# Every handler, Django's own included, redacts key-shaped text (infra/logs.py).
# LOG_FORMAT: one JSON object per line (production: the default when DEBUG is off) or plain
# readable lines (the default under DEBUG, `make run`).
try:
    LOG_FORMAT = log_format(env.str("LOG_FORMAT", default=""), debug=DEBUG)
except ValueError as _error:
    raise ImproperlyConfigured(str(_error)) from None
LOGGING_CONFIG = "infra.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": PLAIN_FORMAT},
        "json": {"()": "infra.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO").upper()},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}

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

# --- DRF: restrictive defaults; each view names its own permission classes.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "keys.authentication.ManagementApiKeyAuthentication",
        "accounts.tokens.VersionedJWTAuthentication",  # revoked by password change/logout
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "aibaas.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "infra.pagination.Pagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

from datetime import timedelta  # noqa: E402

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(hours=env.int("JWT_REFRESH_HOURS", default=24)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "UPDATE_LAST_LOGIN": False,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "aibaas API",
    "DESCRIPTION": "Management API (/api) and OpenAI-compatible machine API (/v1) of aibaas.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # One name for the key scopes wherever they appear (keys' `scopes`, the operators' API).
    "ENUM_NAME_OVERRIDES": {"ScopeEnum": "keys.models.Scope.values"},
    # Swagger UI's files come from the drf-spectacular-sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    # No online validator badge: it would load an image from swagger.io (CSP, no internet).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The /v1 inference endpoints are not DRF views: aibaas/gateway/schema.py adds them.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "aibaas.gateway.schema.add_inference_paths",
        "infra.schema.add_retry_after_headers",
    ],
}

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

# --- Limits (metering/admission.py, limiter.py, quota.py).
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
