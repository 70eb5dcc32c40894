"""The /v1 gateway: model registry, providers, tokenizer and the OpenAI-compatible views."""
