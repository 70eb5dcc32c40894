"""Permissions for /v1 (API-key) views."""

from rest_framework.permissions import BasePermission

from infra.errors import ApplicationError
from keys.authentication import key_context

INSUFFICIENT_SCOPE = "insufficient_scope"
MODEL_NOT_ALLOWED = "model_not_allowed"


def require_scope(context, scope: str) -> None:
    if not context.has_scope(scope):
        raise ApplicationError(
            INSUFFICIENT_SCOPE,
            f"This API key lacks the '{scope}' scope. Add it at /dashboard/keys/ or use "
            "another key.",
            status=403,
        )


def require_model(context, model: str) -> None:
    if not context.allows_model(model):
        raise ApplicationError(
            MODEL_NOT_ALLOWED,
            f"This API key may not use the model '{model}'.",
            status=403,
            param="model",
        )


class HasApiKey(BasePermission):
    """A valid key, with the view's `required_scope` if it names one (default: none)."""

    def has_permission(self, request, view) -> bool:
        context = key_context(request)
        if context is None:
            return False  # 401 invalid_api_key, with how to send a key
        scope = getattr(view, "required_scope", None)
        if scope:
            require_scope(context, scope)
        return True
