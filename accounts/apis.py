"""Management API of accounts: JWT for humans, and the organization's audit log."""

from django.conf import settings
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from django_ratelimit.exceptions import Ratelimited
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from accounts.api_access import INSUFFICIENT_ROLE, OrganizationAccess, resolve_access
from accounts.audit import READERS_ONLY, audit_list
from accounts.models import Role
from accounts.services import user_tokens_revoke
from accounts.tokens import TokenObtainSerializer, TokenRefreshSerializer
from aibaas.errors import ApplicationError
from aibaas.http import ratelimit_retry_after
from aibaas.pagination import Pagination
from aibaas.schema import NO_NUL_PATTERN, errors

TOKEN_RATELIMIT_GROUP = "api-token"


def _login_rate(group, request) -> str:
    return settings.RATELIMIT_LOGIN


_TOKENS = inline_serializer(
    "TokenPair",
    {
        "access": serializers.CharField(help_text="Short-lived access token (Bearer)."),
        "refresh": serializers.CharField(required=False),
    },
)


@extend_schema_view(post=extend_schema(responses={200: _TOKENS, **errors(400, 401, 429)}))
@method_decorator(
    ratelimit(group=TOKEN_RATELIMIT_GROUP, key="ip", rate=_login_rate, method="POST", block=True),
    name="post",
)
class TokenObtainApi(TokenObtainPairView):
    """POST email + password → short-lived access token and a refresh token."""

    authentication_classes: list = []
    serializer_class = TokenObtainSerializer

    def handle_exception(self, exc):
        if isinstance(exc, Ratelimited):  # the real wait, never more than the limit's period
            wait = ratelimit_retry_after(
                self.request, group=TOKEN_RATELIMIT_GROUP, rate=_login_rate
            )
            exc = Throttled(wait=wait, detail="Too many attempts from your address.")
        return super().handle_exception(exc)


@extend_schema_view(post=extend_schema(responses={200: _TOKENS, **errors(400, 401)}))
class TokenRefreshApi(TokenRefreshView):
    """POST a refresh token → a new access token; refused once the user changed their password
    or logged out since the refresh token was issued."""

    authentication_classes: list = []
    serializer_class = TokenRefreshSerializer


class LogoutApi(APIView):
    """Log out of the management API: every JWT of the user (access and refresh, on every
    device) stops working at once. API keys are not affected."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=None, responses={204: None, **errors(401, 403)}, operation_id="auth_logout"
    )
    def post(self, request):
        user_tokens_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.CharField(source="actor_label")
    actor_key_id = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    metadata = serializers.JSONField()


class AuditListApi(APIView):
    """The organization's audit log, newest first. Owners, admins and admin-scoped keys."""

    permission_classes = [OrganizationAccess]
    pagination_class = Pagination  # the schema documents the paginated envelope
    key_scopes = ("admin",)

    class FilterSerializer(serializers.Serializer):
        # DRF's CharField refuses NUL characters (400), which PostgreSQL cannot compare (a 500).
        action = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
        actor = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "action",
                str,
                description="Prefix, e.g. 'key.' or 'key.revoked'.",
                pattern=NO_NUL_PATTERN,
            ),
            OpenApiParameter(
                "actor",
                str,
                description="Part of the actor's email or key id.",
                pattern=NO_NUL_PATTERN,
            ),
        ],
        responses={200: AuditEventOutputSerializer(many=True), **errors(400, 401, 403)},
        operation_id="audit_list",
    )
    def get(self, request):
        access = resolve_access(request)
        if access.actor.role not in (Role.OWNER, Role.ADMIN):
            raise ApplicationError(INSUFFICIENT_ROLE, READERS_ONLY, status=403)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = audit_list(
            organization=access.organization,
            action=filters.validated_data.get("action"),
            actor=filters.validated_data.get("actor"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutputSerializer(page, many=True).data)
