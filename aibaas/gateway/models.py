"""The model registry: the public models customers call and the upstreams that serve them.

Operators edit these rows in Django admin; the /v1 hot path never reads them directly but
through the per-process snapshot in `aibaas/gateway/registry.py`.
"""

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

MODEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Provider keys look like these; an env var *name* never does. Catches a pasted secret.
_SECRET_PREFIXES = ("sk-", "sk_", "sess-", "hf_", "gsk_", "xai-", "key-")

DEFAULT_EMBEDDING_DIMENSIONS = 256
MAX_EMBEDDING_DIMENSIONS = 8192


class ModelKind(models.TextChoices):
    CHAT = "chat", "Chat completions"
    EMBEDDINGS = "embeddings", "Embeddings"


class ProviderKind(models.TextChoices):
    DEMO = "demo", "Built-in demo model (no network)"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible upstream"


def validate_upstream_url(value: str) -> None:
    """An http(s) URL with a host. Unlike Django's URLValidator it accepts single-label hosts
    (`http://vllm:8000/v1`, a Docker service name), which is how model servers are reached."""
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValidationError("Enter a valid URL.", code="invalid") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("The URL must start with http:// or https://.", code="invalid")
    if not parts.hostname or any(ch.isspace() for ch in value):
        raise ValidationError("The URL needs a host, e.g. http://127.0.0.1:8000/v1.")
    if parts.username or parts.password:
        raise ValidationError(
            "Do not put credentials in the URL; name an environment variable in "
            "'API key env var' instead.",
            code="credentials",
        )
    if parts.query or parts.fragment:
        raise ValidationError("The base URL takes no query string or fragment.", code="invalid")
    del port


def validate_env_var_name(value: str) -> None:
    """The NAME of an environment variable (e.g. OPENAI_API_KEY), never the secret itself."""
    if value.startswith(_SECRET_PREFIXES):
        raise ValidationError(
            "This looks like an API key. Store the key in an environment variable of the "
            "server and enter the variable's name here (e.g. OPENAI_API_KEY).",
            code="secret",
        )
    if not ENV_NAME_RE.match(value):
        raise ValidationError(
            "Enter an environment variable name: letters, digits and underscores, not "
            "starting with a digit (e.g. OPENAI_API_KEY).",
            code="invalid",
        )


class AIModel(models.Model):
    """A model customers call by its public name through /v1."""

    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[
            RegexValidator(
                MODEL_NAME_RE,
                "Letters, digits and . _ : / @ + - only, starting with a letter or digit.",
            )
        ],
        help_text="Public model name clients send as `model`, e.g. 'demo-chat' or 'llama-3-8b'.",
    )
    kind = models.CharField(
        max_length=20,
        choices=ModelKind.choices,
        default=ModelKind.CHAT,
        help_text="Chat models serve /v1/chat/completions; embeddings models /v1/embeddings.",
    )
    provider = models.CharField(
        max_length=30,
        choices=ProviderKind.choices,
        default=ProviderKind.OPENAI_COMPATIBLE,
        help_text="'demo' answers in-process without network; 'openai_compatible' forwards "
        "to the upstreams below (vLLM, Ollama, llama.cpp, OpenAI, ...).",
    )
    context_window = models.PositiveIntegerField(
        default=8192,
        validators=[MinValueValidator(1)],
        help_text="Maximum tokens of prompt plus completion the model accepts.",
    )
    enabled = models.BooleanField(
        default=True, help_text="Disabled models are hidden from /v1/models and answer 404."
    )
    test_mode_allowed = models.BooleanField(
        default=False,
        help_text="Test-mode keys (sk_test_...) may call this model. Test keys are never "
        "billed, so only demo models may allow it.",
    )
    response_cache_ttl = models.PositiveIntegerField(
        "response cache TTL",
        default=0,
        help_text="Seconds to serve identical deterministic (temperature 0, non-stream) "
        "requests of one organization from the cache. 0 turns response caching off.",
    )
    embedding_dimensions = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_EMBEDDING_DIMENSIONS)],
        help_text="Embeddings models only: the vector length (the demo model defaults to "
        f"{DEFAULT_EMBEDDING_DIMENSIONS}).",
    )
    description = models.TextField(blank=True, help_text="Shown to operators only.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI model"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.embedding_dimensions is not None and self.kind != ModelKind.EMBEDDINGS:
            errors["embedding_dimensions"] = "Only embeddings models have dimensions."
        if self.test_mode_allowed and self.provider != ProviderKind.DEMO:
            errors["test_mode_allowed"] = (
                "Test-mode keys are never billed, so only demo models may allow them."
            )
        if errors:
            raise ValidationError(errors)


def check_upstream_set(*, model: AIModel, enabled_flags: list[bool]) -> None:
    """The rules on a model's set of upstreams (one flag per upstream, True = enabled).

    A demo model has none; an enabled openai_compatible model needs at least one enabled
    upstream (a disabled one may be saved without, and selectors skip unusable models).
    """
    if model.provider == ProviderKind.DEMO and enabled_flags:
        raise ValidationError("A demo model answers in-process and takes no upstreams.")
    if (
        model.provider == ProviderKind.OPENAI_COMPATIBLE
        and model.enabled
        and not any(enabled_flags)
    ):
        raise ValidationError(
            "An enabled openai_compatible model needs at least one enabled upstream; "
            "add one or untick 'enabled'."
        )


class Upstream(models.Model):
    """One OpenAI-compatible server a model's requests may go to."""

    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="upstreams")
    base_url = models.CharField(
        "base URL",
        max_length=500,
        validators=[validate_upstream_url],
        help_text="The server's OpenAI-compatible root, e.g. http://127.0.0.1:8001/v1 "
        "(requests go to <base URL>/chat/completions).",
    )
    upstream_model = models.CharField(
        max_length=200,
        help_text="The model name the upstream expects, e.g. 'meta-llama/Llama-3.1-8B-Instruct'.",
    )
    api_key_env = models.CharField(
        "API key env var",
        max_length=100,
        blank=True,
        validators=[validate_env_var_name],
        help_text="NAME of the environment variable holding this upstream's API key (e.g. "
        "OPENAI_API_KEY). Secrets never go in the database. Empty: no key is sent.",
    )
    weight = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Relative share of traffic among this model's healthy upstreams.",
    )
    timeout_seconds = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="Read timeout: longest wait for the next byte from the upstream.",
    )
    connect_timeout_seconds = models.FloatField(
        default=5.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(120)],
        help_text="Longest wait to open the connection before trying another upstream.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled upstreams get no traffic.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "id"]

    def __str__(self) -> str:
        return f"{self.upstream_model} @ {self.base_url}"

    def clean(self) -> None:
        try:
            model = self.model  # the in-memory parent too, while an admin inline adds it
        except AIModel.DoesNotExist:
            return
        if model.provider == ProviderKind.DEMO:
            raise ValidationError("A demo model answers in-process and takes no upstreams.")
