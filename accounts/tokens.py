"""JWT of the management API, tied to the user's current credentials.

Every token carries `ver`, a keyed fingerprint of the user's token generation and password
hash. Changing the password (by any path: dashboard, reset, admin, `changepassword`) changes the
hash and logging out bumps the generation, so every access and refresh token issued before stops
matching. Both checks happen on each authentication and each refresh; the fingerprint is an
HMAC with SECRET_KEY, so it says nothing about the password to whoever holds the token.
"""

from django.contrib.auth import get_user_model
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework import exceptions
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import RefreshToken, Token

from accounts.models import User

VERSION_CLAIM = "ver"
TOKEN_REVOKED = "token_revoked"
TOKEN_REVOKED_MESSAGE = (
    "This token was revoked by a password change or a logout; obtain a new one at /api/auth/token."
)
_SALT = "aibaas.accounts.tokens.version"


def token_version(user: User) -> str:
    """The `ver` claim for the user's tokens as of now. Costs one HMAC; touches nothing else."""
    value = f"{user.pk}:{user.jwt_generation}:{user.password}"
    return salted_hmac(_SALT, value, algorithm="sha256").hexdigest()[:32]


def _check_version(token: Token, user: User) -> None:
    claimed = token.get(VERSION_CLAIM)
    if not isinstance(claimed, str) or not constant_time_compare(claimed, token_version(user)):
        raise exceptions.AuthenticationFailed(TOKEN_REVOKED_MESSAGE, code=TOKEN_REVOKED)


class VersionedRefreshToken(RefreshToken):
    """A refresh token with the `ver` claim; its access tokens copy the claim."""

    @classmethod
    def for_user(cls, user: User) -> "VersionedRefreshToken":
        token = super().for_user(user)
        token[VERSION_CLAIM] = token_version(user)
        return token


class TokenObtainSerializer(TokenObtainPairSerializer):
    token_class = VersionedRefreshToken


class TokenRefreshSerializer(TokenRefreshSerializer):
    """simplejwt's refresh, refused when the user is gone, inactive or the token revoked."""

    token_class = VersionedRefreshToken

    def validate(self, attrs):
        refresh = self.token_class(attrs["refresh"])
        user_id = refresh.payload.get(api_settings.USER_ID_CLAIM)
        user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
        if user is None or not api_settings.USER_AUTHENTICATION_RULE(user):
            raise exceptions.AuthenticationFailed(
                self.error_messages["no_active_account"], code="no_active_account"
            )
        _check_version(refresh, user)
        return super().validate(attrs)


class VersionedJWTAuthentication(JWTAuthentication):
    """simplejwt's bearer authentication, refusing tokens revoked by a password change or a
    logout (401 `token_revoked`). Returns None without a bearer JWT, as DRF expects."""

    def get_user(self, validated_token: Token) -> User:
        user = super().get_user(validated_token)
        _check_version(validated_token, user)
        return user
