"""The admin's "Test connection": ask an upstream for its `/models` and one token of work, with
a short timeout, and say what came back. Synchronous (an operator's click, not the /v1 path).

Never raises for anything the upstream does, and never returns or logs the upstream's key: the
key's value is masked in whatever the upstream says back (some servers echo it in a 401).
"""

import os
import time
from dataclasses import dataclass

import httpx

from aibaas.gateway.providers.base import UpstreamSpec

PROBE_TIMEOUT = 5.0  # seconds, connect and read alike
SHOWN_MODELS = 10
SHOWN_ERROR_CHARS = 200
MASK = "[upstream key]"


@dataclass(frozen=True)
class ProbeStep:
    """One request of a probe: what was asked, the HTTP status (None: no answer), how long it
    took, and what was got (the model list, or what went wrong)."""

    request: str
    ok: bool
    status: int | None
    latency_ms: int
    detail: str

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{self.request}: {status} in {self.latency_ms} ms, {self.detail}"


def probe(upstream: UpstreamSpec, *, kind: str) -> list[ProbeStep]:
    """GET <base>/models, then a one-token chat completion (`kind` "chat") or one embedding,
    each within PROBE_TIMEOUT seconds."""
    timeout = PROBE_TIMEOUT
    secret = os.environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    base = upstream.base_url.rstrip("/")
    if kind == "embeddings":
        work = (
            "POST /embeddings",
            "/embeddings",
            {"model": upstream.upstream_model, "input": "hi"},
        )
    else:
        body = {
            "model": upstream.upstream_model,
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_tokens": 1,
        }
        work = ("POST /chat/completions", "/chat/completions", body)
    steps = []
    with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
        steps.append(_step(client, "GET /models", "GET", base + "/models", None, secret))
        request, path, payload = work
        steps.append(_step(client, request, "POST", base + path, payload, secret))
    return steps


def _step(client: httpx.Client, request: str, method: str, url: str, payload, secret: str):
    started = time.perf_counter()

    def took() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        response = client.request(method, url, json=payload)
    except httpx.TimeoutException:
        return ProbeStep(request, False, None, took(), f"timed out after {client.timeout.read} s")
    except httpx.ConnectError as error:
        return ProbeStep(request, False, None, took(), f"cannot connect ({_mask(error, secret)})")
    except httpx.HTTPError as error:
        return ProbeStep(request, False, None, took(), _mask(error, secret) or type(error).__name__)
    latency = took()
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return ProbeStep(request, True, response.status_code, latency, _summary(request, body))
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    detail = str(message) if message else response.text or response.reason_phrase
    return ProbeStep(request, False, response.status_code, latency, _mask(detail, secret))


def _summary(request: str, body: dict) -> str:
    if request == "GET /models":
        data = body.get("data")
        ids = (
            [str(m.get("id")) for m in data if isinstance(m, dict)]
            if isinstance(data, list)
            else []
        )
        more = f" (+{len(ids) - SHOWN_MODELS} more)" if len(ids) > SHOWN_MODELS else ""
        return f"models: {', '.join(ids[:SHOWN_MODELS]) or 'none listed'}{more}"
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    if "data" in body:
        return f"an embedding came back (usage: {usage or 'not reported'})"
    return f"a completion came back (usage: {usage or 'not reported'})"


def _mask(text, secret: str) -> str:
    text = str(text)
    if secret:
        text = text.replace(secret, MASK)
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_ERROR_CHARS else text[: SHOWN_ERROR_CHARS - 1] + "…"
