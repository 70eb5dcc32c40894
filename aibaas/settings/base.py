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
