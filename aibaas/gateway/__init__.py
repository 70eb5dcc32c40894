"""The /v1 gateway: model registry, providers, tokenizer, the inference routes' ASGI handler."""
