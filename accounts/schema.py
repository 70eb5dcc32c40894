"""OpenAPI (drf-spectacular) description of the management API's JWT authentication."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class VersionedJWTScheme(SimpleJWTScheme):
    """simplejwt's bearer scheme, for its subclass that checks the `ver` claim."""

    target_class = "accounts.tokens.VersionedJWTAuthentication"
