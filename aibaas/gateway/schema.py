"""OpenAPI description of the /v1 inference endpoints, which are not DRF views (the ASGI handler
serves them): a drf-spectacular postprocessing hook adds their paths, and their bodies
(aibaas/gateway/schema_components.py), to /api/schema/ and /api/docs/.

This is the one place for the /v1 schema: the two /v1 DRF views (aibaas/gateway/apis.py:
`/v1/key` KeyInfoApi, `/v1/usage` UsageApi) describe their bodies with their serializers.
tests/e2e/test_schemathesis.py checks the responses against it.
"""

from aibaas.gateway.schema_components import SCHEMAS, ref
from infra.schema import ERROR_DESCRIPTIONS
from keys.schema import KEY_SECURITY, KEY_SECURITY_SCHEMES

TAG = "v1"
SECURITY = KEY_SECURITY
INFERENCE_ERRORS = (400, 401, 403, 404, 413, 415, 429, 502, 503, 504)

_ERROR_REF = ref("Error")
_RETRYABLE_REF = ref("RetryableError")


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _responses(ok: dict, *statuses: int) -> dict:
    responses = {"200": ok}
    for status in statuses:
        body = _RETRYABLE_REF if status == 429 else _ERROR_REF
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": _json(body)}
    return responses


def _operation(operation_id: str, description: str, responses: dict, **extra) -> dict:
    return {
        "operationId": operation_id,
        "description": description,
        "tags": [TAG],
        "security": SECURITY,
        "responses": responses,
        **extra,
    }


def _body(name: str) -> dict:
    return {"required": True, "content": _json(ref(name))}


PATHS: dict[str, dict] = {
    "/v1/models": {
        "get": _operation(
            "v1_models_list",
            "The models this key may use (needs the inference scope).",
            _responses(
                {"description": "OpenAI's model list.", "content": _json(ref("ModelList"))},
                401,
                403,
                429,
                503,
            ),
        )
    },
    "/v1/models/{model}": {
        "get": _operation(
            "v1_models_retrieve",
            "One model this key may use.",
            _responses(
                {"description": "The model.", "content": _json(ref("Model"))},
                401,
                403,
                404,
                429,
                503,
            ),
            parameters=[
                {
                    "in": "path",
                    "name": "model",
                    "required": True,
                    "schema": {"type": "string"},
                    "example": "demo-chat",
                }
            ],
        )
    },
    "/v1/chat/completions": {
        "post": _operation(
            "v1_chat_completions",
            "OpenAI-compatible chat completion. With `stream: true` the answer is server-sent "
            "events: `data: <chat.completion.chunk JSON>` lines, then `data: [DONE]` "
            "(with stream_options.include_usage, a last chunk carries `usage`).",
            _responses(
                {
                    "description": "The completion, or its stream of chunks.",
                    "content": {
                        **_json(ref("ChatCompletion")),
                        "text/event-stream": {"schema": ref("ChatCompletionStreamEvent")},
                    },
                },
                *INFERENCE_ERRORS,
            ),
            requestBody=_body("ChatCompletionRequest"),
        )
    },
    "/v1/embeddings": {
        "post": _operation(
            "v1_embeddings",
            "OpenAI-compatible embeddings.",
            _responses(
                {"description": "The embeddings.", "content": _json(ref("EmbeddingList"))},
                *INFERENCE_ERRORS,
            ),
            requestBody=_body("EmbeddingRequest"),
        )
    },
}


def add_inference_paths(result, generator, request, public):
    """drf-spectacular postprocessing hook: the /v1 inference paths and their components."""
    paths = result.setdefault("paths", {})
    for path, item in PATHS.items():
        paths[path] = item
    result["paths"] = dict(sorted(paths.items()))
    components = result.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(KEY_SECURITY_SCHEMES)
    schemas = components.setdefault("schemas", {})
    schemas.update(SCHEMAS)
    result["components"]["schemas"] = dict(sorted(schemas.items()))
    return result
