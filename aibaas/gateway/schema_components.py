"""The /v1 inference bodies as OpenAPI components (requests, completions, chunks, embeddings).

Every constraint is the one aibaas/gateway/validation.py enforces (its constants are used), so
the schema never allows a body the server refuses with a 400.
"""

from aibaas.gateway import validation


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _positive_int(description: str) -> dict:
    return _nullable({"type": "integer", "minimum": 1, "description": description})


_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": validation.MAX_TOKEN_ID}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": _TOKEN_ID}
_INPUTS = {"type": "array", "minItems": 1, "maxItems": validation.MAX_EMBEDDING_INPUTS}
_MODEL_NAME = {
    "type": "string",
    "pattern": validation.MODEL_PATTERN.pattern,
    "description": "A model id from GET /v1/models.",
    "example": "demo-chat",
}
_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "example": "text"}, "text": {"type": "string"}},
}
_CONTENT = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}],
    "description": "Text, or a list of content parts.",
}
_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}


def _completion(kind: str, *, choice: str, usage: dict) -> dict:
    """A chat completion ("message" choices) or one chunk of its stream ("delta" choices)."""
    return {
        "type": "object",
        "required": ["object", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": [kind]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        choice: {"type": "object"},
                        "finish_reason": _nullable({"type": "string"}),
                    },
                },
            },
            "usage": usage,
        },
    }


SCHEMAS: dict[str, dict] = {
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": ref("Model")},
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": list(validation.ROLES)},
            "content": _nullable(_CONTENT),
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
        # content is required, except for an assistant message that carries tool calls
        "anyOf": [
            {"required": ["content"], "properties": {"content": _CONTENT}},
            {
                "required": ["tool_calls"],
                "properties": {
                    "role": {"type": "string", "enum": ["assistant"]},
                    "tool_calls": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                },
            },
        ],
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": "OpenAI's chat completion request. Fields not listed pass through to "
        "the model server unchanged.",
        "properties": {
            "model": _MODEL_NAME,
            "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
            "stream": _nullable(
                {"type": "boolean", "description": "Answer as server-sent events."}
            ),
            "stream_options": _nullable(
                {
                    "type": "object",
                    "description": "Only with stream: true.",
                    "properties": {"include_usage": _nullable({"type": "boolean"})},
                }
            ),
            "max_tokens": _positive_int("Most tokens to generate."),
            "max_completion_tokens": _positive_int("Most tokens to generate."),
            "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
            "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": validation.MAX_N}),
            "stop": _nullable(
                {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "maxItems": validation.MAX_STOP,
                            "items": {"type": "string"},
                        },
                    ]
                }
            ),
        },
        # stream_options only with stream: true
        "anyOf": [
            {"required": ["stream"], "properties": {"stream": {"type": "boolean", "enum": [True]}}},
            {"properties": {"stream_options": {"nullable": True, "enum": [None]}}},
        ],
        "example": {
            "model": "demo-chat",
            "messages": [{"role": "user", "content": "Tell me about foxes."}],
            "max_tokens": 16,
        },
    },
    "ChatCompletion": _completion("chat.completion", choice="message", usage=_USAGE),
    "ChatCompletionChunk": _completion(
        "chat.completion.chunk", choice="delta", usage=_nullable(_USAGE)
    ),
    # One server-sent event of a stream. OpenAPI 3.0 has no way to say "this string is JSON of
    # that schema" (3.1's contentSchema): the chunk is its own component, and
    # tests/aibaas/test_schema.py checks streamed chunks against it.
    "ChatCompletionStreamEvent": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {
                "type": "string",
                "description": "A ChatCompletionChunk as JSON, or [DONE] at the end.",
            },
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {**_MODEL_NAME, "example": "demo-embed"},
            "input": {
                "description": "A text, a list of texts, token ids, or lists of token ids.",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        **_INPUTS,
                        "items": {"anyOf": [{"type": "string", "minLength": 1}, _TOKEN_IDS]},
                    },
                    {**_INPUTS, "items": _TOKEN_ID},
                ],
            },
            "encoding_format": _nullable(
                {"type": "string", "enum": list(validation.ENCODING_FORMATS)}
            ),
            "dimensions": _positive_int("At most the model's dimensions (400 above)."),
        },
        "example": {"model": "demo-embed", "input": "Tell me about foxes."},
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "model": {"type": "string"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"type": "string", "enum": ["embedding"]},
                        "index": {"type": "integer"},
                        "embedding": {
                            "anyOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 float32s"},
                            ]
                        },
                    },
                },
            },
            "usage": _USAGE,
        },
    },
}
