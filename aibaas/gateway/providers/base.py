"""The provider interface the /v1 pipeline calls. One implementation per provider kind:
`demo` (built in, no network) and `openai_compatible` (aiohttp to vLLM/Ollama/llama.cpp/OpenAI).

Every call returns OpenAI-shaped data plus the token usage the request is billed for.
Streaming calls yield raw SSE lines (bytes, each ending in b"\\n\\n") as they are produced,
and fill `StreamUsage` as they go, so usage is known even when the client hangs up mid-stream.

A model server that fails raises ProviderError (502 upstream_error, 504 upstream_timeout); one
that refuses the customer's request as invalid (its 400/413/422) raises ApplicationError 400
invalid_request_error with the server's message and param, as the gateway's own validation does.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.errors import ApplicationError

UPSTREAM_ERROR = "upstream_error"
UPSTREAM_TIMEOUT = "upstream_timeout"


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    base_url: str
    upstream_model: str
    api_key_env: str  # the NAME of the environment variable holding the key ("" = none)
    weight: int = 1
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the gateway needs to know about a public model (cached per process)."""

    name: str
    kind: str  # "chat" | "embeddings"
    provider: str  # "demo" | "openai_compatible"
    context_window: int
    test_mode_allowed: bool
    response_cache_ttl: int  # seconds; 0 = response caching off for this model
    upstreams: tuple[UpstreamSpec, ...] = ()
    embedding_dimensions: int | None = None


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False  # True when counted with our tokenizer, not reported upstream


@dataclass(slots=True)
class ProviderResult:
    body: dict[str, Any]  # the OpenAI-shaped response body
    usage: Usage
    upstream_latency_ms: float = 0.0


@dataclass(slots=True)
class StreamUsage:
    """Filled while a stream runs; read after it ends or after the client hung up."""

    usage: Usage = field(default_factory=Usage)
    upstream_latency_ms: float = 0.0  # time to the first byte from the upstream
    finished: bool = False  # the stream reached its end ([DONE])
    # Content chunks relayed so far (one token each or more): while `usage` is known only at
    # the end (upstreams), the output count of a stream cut short by the death of its process
    # (metering/usage/inflight.py checkpoints max(usage.output_tokens, produced)).
    produced: int = 0


class Provider(Protocol):
    async def chat(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult: ...

    def chat_stream(
        self, model: ModelSpec, body: dict[str, Any], usage: StreamUsage
    ) -> AsyncIterator[bytes]: ...

    async def embeddings(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult: ...


class ProviderError(ApplicationError):
    """The upstream failed: `status` 502 (upstream_error) or 504 (upstream_timeout)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message, status=status)
