from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from aibaas.gateway.models import ModelKind
from aibaas.gateway.services import ModelServerModel, model_add
from infra.commands import service_errors


def price(text: str) -> Decimal:
    """argparse type: USD per million tokens, a plain non-negative decimal number."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(text) from None
    if not value.is_finite() or value < 0:
        raise ValueError(text)
    return value


price.__name__ = "price"  # argparse names the type in its error: "invalid price value: 'x'"


class Command(BaseCommand):
    help = (
        "Add a model served by an OpenAI-compatible model server (vLLM, Ollama, llama.cpp "
        "server, OpenAI...): the public model, its upstream and its price. Idempotent: the same "
        "command again changes nothing; a model of that name with other settings is refused. "
        "README, 'Model servers', has the command for each server."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Public model name clients send as `model`.")
        parser.add_argument(
            "--kind", choices=ModelKind.values, default=ModelKind.CHAT, help="Default: chat."
        )
        parser.add_argument(
            "--base-url",
            required=True,
            help="The server's OpenAI-compatible root, e.g. http://127.0.0.1:8001/v1.",
        )
        parser.add_argument(
            "--upstream-model",
            required=True,
            help="The model name the server expects, e.g. meta-llama/Llama-3.1-8B-Instruct.",
        )
        parser.add_argument(
            "--api-key-env",
            default="",
            help="NAME of the environment variable holding the server's API key (never the "
            "key). Omit for a server without one.",
        )
        parser.add_argument("--input-price", type=price, required=True, help="USD per 1M.")
        parser.add_argument("--output-price", type=price, default=Decimal(0), help="USD per 1M.")
        parser.add_argument(
            "--cached-input-price",
            type=price,
            default=None,
            help="USD per 1M input tokens served from the response cache (default: input).",
        )
        parser.add_argument("--context-window", type=int, default=8192)

    def handle(self, *args, **opts):
        spec = ModelServerModel(
            name=opts["name"],
            kind=opts["kind"],
            base_url=opts["base_url"],
            upstream_model=opts["upstream_model"],
            api_key_env=opts["api_key_env"],
            input_per_million=opts["input_price"],
            output_per_million=opts["output_price"],
            cached_input_per_million=opts["cached_input_price"],
            context_window=opts["context_window"],
        )
        with service_errors():
            try:
                model, created = model_add(spec=spec)
            except ValidationError as error:
                if not hasattr(error, "error_dict"):
                    raise
                raise CommandError(
                    "; ".join(
                        f"{field}: {' '.join(messages)}"
                        for field, messages in error.message_dict.items()
                    )
                ) from None
        state = "added" if created else "already present, unchanged"
        self.stdout.write(f"{model.name}: {state} ({spec.upstream_model} @ {spec.base_url})")
