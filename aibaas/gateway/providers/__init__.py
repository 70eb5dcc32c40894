"""Provider adapters: the only code that answers for a model or talks to an upstream.

`provider_for(spec)` returns the one (stateless, process-wide) Provider of a model's kind.
The adapters are imported on first use: this package's `base` module is imported by the
registry, and a process serving only the demo model never loads the HTTP client stack.
"""

from aibaas.gateway.providers.base import ModelSpec, Provider

_providers: dict[str, Provider] = {}


def provider_for(spec: ModelSpec) -> Provider:
    """The Provider serving `spec` ("demo" or "openai_compatible")."""
    provider = _providers.get(spec.provider)
    if provider is not None:
        return provider
    if spec.provider == "demo":
        from aibaas.gateway.providers.demo import DemoProvider

        provider = DemoProvider()
    elif spec.provider == "openai_compatible":
        from aibaas.gateway.providers.openai_compatible import OpenAICompatibleProvider

        provider = OpenAICompatibleProvider()
    else:
        raise ValueError(f"Unknown provider {spec.provider!r} for model {spec.name!r}")
    return _providers.setdefault(spec.provider, provider)
