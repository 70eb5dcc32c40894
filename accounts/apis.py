"""Management API of accounts: JWT for humans. The audit log's API is keys/audit_apis.py."""

from django.conf import settings
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from django_ratelimit.exceptions import Ratelimited
from drf_spectacular.utils import (
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

from accounts.services import user_tokens_revoke
from accounts.tokens import TokenObtainSerializer, TokenRefreshSerializer
from infra.http import TOO_MANY_ATTEMPTS, ratelimit_retry_after
from infra.schema import errors

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
            exc = Throttled(wait=wait, detail=TOO_MANY_ATTEMPTS)
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
