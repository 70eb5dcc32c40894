"""OpenAPI (drf-spectacular) description of API-key authentication: one key, sent in either of
two headers, so two security schemes, either of which will do."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

KEY_SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer sk_live_...`.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key in the `X-API-Key` header.",
    },
}
# Either header (OR), not both.
KEY_SECURITY = [{name: []} for name in KEY_SECURITY_SCHEMES]


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "keys.authentication.ApiKeyAuthentication"
    name = list(KEY_SECURITY_SCHEMES)

    def get_security_requirement(self, auto_schema):
        return KEY_SECURITY

    def get_security_definition(self, auto_schema):
        return list(KEY_SECURITY_SCHEMES.values())


class ManagementApiKeyAuthenticationScheme(ApiKeyAuthenticationScheme):
    """On /api, a key with the scope the operation needs (admin or keys:write): the same two
    schemes, defined once (drf-spectacular names a scheme after one authentication class)."""

    target_class = "keys.authentication.ManagementApiKeyAuthentication"
    name = []
