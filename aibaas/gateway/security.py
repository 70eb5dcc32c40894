"""Django's own security decisions for the /v1 ASGI handler, which has no Django request: the
Host check (HttpRequest.get_host: ALLOWED_HOSTS, USE_X_FORWARDED_HOST), HTTPS (is_secure:
SECURE_PROXY_SSL_HEADER), the redirect and the response headers (SecurityMiddleware: SSL
redirect, host and exemptions, HSTS, nosniff, Referrer-Policy, Cross-Origin-Opener-Policy).

No setting is read here: a `SecurityRequest` is the sliver of HttpRequest those methods read,
built from the ASGI scope without parsing a body, cookies or a query string. The settings are
fixed while a `Security` lives (the handler makes a new one when a test overrides them).
"""

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware

# Distinct accepted Host values remembered per process (a wildcard in ALLOWED_HOSTS accepts
# any number: past this many, the check runs every time).
MAX_HOSTS = 256


class _Meta(dict):
    """request.META whose HTTP_* entries are read from the request's headers when asked for
    (`HTTP_X_FORWARDED_PROTO` is header `x-forwarded-proto`): Django reads two or three of
    them, and converting every header's name for each request costs more than the rest."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str], **fixed: str) -> None:
        super().__init__(fixed)
        self.headers = headers  # lower-case names (ASGI)

    def _header(self, key: object) -> str | None:
        if isinstance(key, str) and key.startswith("HTTP_"):
            return self.headers.get(key[5:].lower().replace("_", "-"))
        return None

    def __missing__(self, key):
        value = self._header(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or self._header(key) is not None

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        value = self._header(key)
        return default if value is None else value


class SecurityRequest(HttpRequest):
    """What Django's host check and SecurityMiddleware read of a request, and nothing else."""

    def __init__(self, scope, headers: dict[str, str], query: str) -> None:
        # HttpRequest.__init__ is skipped on purpose: it builds QueryDicts nobody reads here.
        self.path = scope["path"]
        self.method = scope["method"]
        self._scheme = scope.get("scheme") or "http"
        server = scope.get("server") or ("127.0.0.1", 80)
        self.META = _Meta(
            headers,
            QUERY_STRING=query,
            SERVER_NAME=server[0],
            SERVER_PORT=str(server[1] or 80),
        )

    def _get_scheme(self) -> str:
        return self._scheme


def _ignored(request):
    """SecurityMiddleware's get_response, which only __call__ uses: /v1 asks process_request
    and process_response directly, so reaching this is a bug."""
    raise RuntimeError("SecurityMiddleware is asked for its decisions here, never called")


class Security:
    """Django's SecurityMiddleware, asked for its redirect and its headers."""

    def __init__(self) -> None:
        self.middleware = SecurityMiddleware(_ignored)
        self._headers: dict[bool, list[tuple[bytes, bytes]]] = {}
        self._allowed: set[str] = set()  # raw hosts get_host accepted

    def allowed_host(self, request: SecurityRequest) -> bool:
        """Django's Host check (get_host: ALLOWED_HOSTS, USE_X_FORWARDED_HOST). Its verdict
        depends on nothing but the raw host (`_get_raw_host`) and the settings, which do not
        change while this object lives: an accepted host is remembered (up to MAX_HOSTS of
        them), a refused one is asked again every time."""
        raw = request._get_raw_host()
        if raw in self._allowed:
            return True
        try:
            request.get_host()
        except DisallowedHost:
            return False
        if len(self._allowed) < MAX_HOSTS:
            self._allowed.add(raw)
        return True

    def redirect(self, request: SecurityRequest) -> str | None:
        """The Location of the HTTPS redirect Django would answer with, or None."""
        response = self.middleware.process_request(request)
        return None if response is None else response["Location"]

    def headers(self, request: SecurityRequest) -> list[tuple[bytes, bytes]]:
        """The headers SecurityMiddleware adds to a response to this request. They depend on
        nothing but whether the request is secure: computed once for each case."""
        secure = request.is_secure()
        pairs = self._headers.get(secure)
        if pairs is None:
            response = self.middleware.process_response(request, HttpResponse())
            added = {k: v for k, v in response.items() if k.lower() != "content-type"}
            pairs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in added.items()]
            self._headers[secure] = pairs
        return pairs
