"""The management API: Django REST Framework's restrictive defaults, JWT, the OpenAPI schema."""

from datetime import timedelta

from .env import env

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
