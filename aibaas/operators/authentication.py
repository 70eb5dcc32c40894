"""Who may use the operators' API: the operator token (OPERATOR_API_TOKEN) or a staff user.

The token is compared in constant time and is never a tenant key: bearer values shaped like our
keys (`sk_`) or like a JWT are left to those authenticators, whose callers the permission then
refuses (a tenant key: 403) or admits (a staff user's JWT). With OPERATOR_API_TOKEN empty the
token path is off.
"""

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.utils.crypto import constant_time_compare
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from accounts.actors import Actor
from accounts.models import Role
from infra.errors import ApplicationError
from infra.http import client_ip, user_agent
from keys.authentication import CHALLENGE, MAX_HEADER, key_context

INVALID_OPERATOR_TOKEN = "invalid_operator_token"
INVALID_OPERATOR_TOKEN_MESSAGE = "This is not the operator token (OPERATOR_API_TOKEN)."
OPERATORS_ONLY = "operators_only"
TENANT_KEY_REFUSED_MESSAGE = (
    "Tenant API keys, whatever their scopes, may not use the operators' API: use the operator "
    "token or a staff account."
)
NOT_STAFF_MESSAGE = "Only staff users and the operator token may use the operators' API."
TOKEN_ACTOR = "operator-token"
STAFF_ACTOR = "operator-api"


@dataclass(frozen=True, slots=True)
class OperatorToken:
    """`request.auth` of a request that sent the operator token."""


def _bearer(request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "")[:MAX_HEADER].partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class OperatorTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <OPERATOR_API_TOKEN>`. Returns None when the token path is off or
    the bearer value is a tenant key or a JWT (their authenticators follow), raises
    AuthenticationFailed (401) for any other value that is not the token, and returns
    (AnonymousUser, OperatorToken) for the token."""

    def authenticate(self, request):
        expected = settings.OPERATOR_API_TOKEN
        token = _bearer(request)
        if not expected or not token or token.startswith("sk_") or token.count(".") == 2:
            return None
        if not constant_time_compare(token, expected):
            raise exceptions.AuthenticationFailed(
                INVALID_OPERATOR_TOKEN_MESSAGE, code=INVALID_OPERATOR_TOKEN
            )
        return AnonymousUser(), OperatorToken()

    def authenticate_header(self, request) -> str:
        return CHALLENGE


class IsOperator(BasePermission):
    """The operator token, or an active staff user (session or JWT). No credential: 401; a
    tenant key or a user who is not staff: 403 operators_only."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, OperatorToken):
            return True
        if key_context(request) is not None:
            raise ApplicationError(OPERATORS_ONLY, TENANT_KEY_REFUSED_MESSAGE, status=403)
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        if user.is_active and user.is_staff:
            return True
        raise ApplicationError(OPERATORS_ONLY, NOT_STAFF_MESSAGE, status=403)


def operator_actor(request) -> Actor:
    """The audit log's actor: the staff user (by email), else the operator token."""
    ip, agent = client_ip(request), user_agent(request)
    if isinstance(request.auth, OperatorToken):
        return Actor(system=TOKEN_ACTOR, ip=ip, user_agent=agent)
    return Actor(user=request.user, role=Role.ADMIN, system=STAFF_ACTOR, ip=ip, user_agent=agent)


class OperatorTokenScheme(OpenApiAuthenticationExtension):
    """OpenAPI: the operator token is an HTTP bearer scheme of its own."""

    target_class = "aibaas.operators.authentication.OperatorTokenAuthentication"
    name = "OperatorToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <OPERATOR_API_TOKEN>` (operators' API only).",
        }
