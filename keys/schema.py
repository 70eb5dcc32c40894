"""OpenAPI (drf-spectacular) description of API-key authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "keys.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, `Authorization: Bearer sk_live_...` "
            "(or the `X-API-Key` header).",
        }


class ManagementApiKeyAuthenticationScheme(ApiKeyAuthenticationScheme):
    target_class = "keys.authentication.ManagementApiKeyAuthentication"
    name = "ManagementApiKey"
