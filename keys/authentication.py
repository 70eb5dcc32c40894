"""DRF authentication by API key (keys/verification.py does the work), and the one reading of
the key from request headers, which the /v1 ASGI handler (aibaas/gateway/asgi.py) uses too."""

from collections.abc import Mapping

from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from infra.http import client_ip
from keys.context import KeyContext
from keys.touch import note_key_use
from keys.verification import KeyRejected, authenticate_key

MAX_HEADER = 1024
CHALLENGE = 'Bearer realm="aibaas"'  # WWW-Authenticate of every 401 about the API key


class KeyAuthenticationFailed(exceptions.AuthenticationFailed):
    """An AuthenticationFailed that carries our error code (invalid_api_key, key_revoked, ...)."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.error_code = code
        # DRF rewrites status_code to 403 when the view's first authenticator sends no
        # WWW-Authenticate (the session, on /api); the exception handler uses this one.
        self.error_status = status


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`, or None.

    `headers` answers `get()` for lower-case names: Django's `request.headers`, or the ASGI
    handler's dict of the raw headers (decoded as latin-1). At most MAX_HEADER characters are
    read of either header."""
    header = headers.get("authorization")
    if header:
        scheme, _, credentials = header[:MAX_HEADER].partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
    header = headers.get("x-api-key")
    if header:
        return header[:MAX_HEADER].strip()
    return None


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates /v1 requests by API key.

    Returns None when no key is sent (the view's permission then answers 401 with a message on
    how to send one), raises KeyAuthenticationFailed for a bad, revoked or expired key, and on
    success returns (AnonymousUser, KeyContext): a key is not a person, and `request.auth` is
    what permissions and views read.
    """

    def claims(self, token: str) -> bool:
        return True

    def authenticate(self, request):
        token = key_from_headers(request.headers)
        if token is None or not self.claims(token):
            return None
        try:
            context = authenticate_key(token)
        except KeyRejected as rejected:
            raise KeyAuthenticationFailed(
                rejected.code, rejected.message, rejected.status
            ) from None
        note_key_use(context.pk, context.key_id, client_ip(request))
        return AnonymousUser(), context

    def authenticate_header(self, request) -> str:
        return CHALLENGE


class ManagementApiKeyAuthentication(ApiKeyAuthentication):
    """For /api: only tokens that look like our keys, so JWT bearer tokens pass to simplejwt."""

    def claims(self, token: str) -> bool:
        return token.startswith("sk_")


def key_context(request) -> KeyContext | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, KeyContext) else None
