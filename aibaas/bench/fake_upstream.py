"""A fast fake OpenAI-compatible upstream (raw ASGI), for `make bench` and the gateway tests.

What it answers is chosen by the upstream model name the gateway sends (the table below):
answers at once, slow streams, errors, broken streams, nonsense usage. Streaming honours
`stream_options.include_usage`. Run it: `python -m aibaas.bench.fake_upstream --port 9100`
(uvicorn), or in-process with `serve_in_thread()`.
"""

import asyncio
import json
import threading
import time

# Behaviour per upstream model name:
# - "fake"            answers at once (chat and embeddings), with usage;
# - "fake-no-usage"   answers without a usage object (the gateway must estimate);
# - "fake-500"        answers 500 (the gateway retries / falls back);
# - "fake-400"        answers 400 with an OpenAI-shaped error (passed on to the client);
# - "fake-echo-auth"  answers with the Authorization header it received as the content;
# - "fake-hang"       never answers (the gateway's read timeout must fire);
# - "fake-slow"       streams: first token after FIRST_TOKEN_DELAY s, then tokens over
#                     STREAM_SECONDS;
# - "fake-<status>"   (any other 4xx/5xx, e.g. "fake-401", "fake-429") answers that status with
#                     an OpenAI-shaped error whose message holds what must never reach a
#                     customer (UPSTREAM_SECRET and the key it received) and
#                     `param: "messages"`; each such answer is counted in `errors_served`;
# - "fake-json-stream", "fake-html-stream": answer a stream request with a 200 JSON body / an
#                     HTML page;
# - "fake-no-done"    streams the answer without usage and closes without `data: [DONE]`;
# - "fake-error-mid-stream": streams two chunks, then an error event, and closes;
# - "fake-<kind>-usage" (negative, string, float, huge) reports that nonsense usage, both ways.
# `GET .../models` lists FAKE_MODELS. Any request with the key REJECTED_KEY gets OpenAI's 401,
# whose message quotes the key (as OpenAI's does).

FIRST_TOKEN_DELAY = 1.0
STREAM_SECONDS = 2.0
STREAM_TOKENS = 20

_REPLY = "The quick brown fox jumps over the lazy dog."
_DONE = b"data: [DONE]\n\n"
UPSTREAM_SECRET = "org-upstreamsecret"
REJECTED_KEY = "sk-rejected-by-the-fake-upstream"
FAKE_MODELS = ("fake", "fake-no-usage", "fake-slow")

_BAD_USAGE = {
    "fake-negative-usage": {"prompt_tokens": -500, "completion_tokens": 10, "total_tokens": -490},
    "fake-string-usage": {"prompt_tokens": "12", "completion_tokens": "10", "total_tokens": "22"},
    "fake-float-usage": {"prompt_tokens": 12.5, "completion_tokens": 10, "total_tokens": 22.5},
    "fake-huge-usage": {"prompt_tokens": 10**12, "completion_tokens": 10, "total_tokens": 10**12},
}
_HTML = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"

# "fake-<status>" model -> how many error answers it got (tests count the retries).
errors_served: dict[str, int] = {}


def _chat_body(model: str, with_usage: bool) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _REPLY},
                "finish_reason": "stop",
            }
        ],
    }
    if with_usage:
        body["usage"] = _BAD_USAGE.get(
            model, {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}
        )
    return json.dumps(body).encode()


def _embedding_body(model: str, inputs: list) -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]}
        for i in range(len(inputs))
    ]
    usage = _BAD_USAGE.get(model) or {
        "prompt_tokens": 3 * len(inputs),
        "total_tokens": 3 * len(inputs),
    }
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _error_status(model: str) -> int | None:
    status = model[5:] if model.startswith("fake-") else ""
    return int(status) if status.isdigit() and 400 <= int(status) <= 599 else None


async def _error(scope, send, model: str, status: int) -> None:
    errors_served[model] = errors_served.get(model, 0) + 1
    key = dict(scope["headers"]).get(b"authorization", b"").decode()
    message = f"Upstream error {status} for {UPSTREAM_SECRET}, key {key!r}"
    body = {"error": {"message": message, "type": "fake_error", "param": "messages", "code": None}}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"x-upstream-org", b"secret")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _chunk(model: str, choices: list, **extra) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _delta(model: str, delta: dict, finish: str | None = None) -> bytes:
    return _chunk(model, [{"index": 0, "delta": delta, "finish_reason": finish}])


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(send, status: int, body: bytes, kind: bytes = b"application/json") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    raw = await _read_body(receive)
    if dict(scope["headers"]).get(b"authorization") == f"Bearer {REJECTED_KEY}".encode():
        message = f"Incorrect API key provided: {REJECTED_KEY}."
        body = {"error": {"message": message, "type": "invalid_request_error", "code": "401"}}
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
        return
    if scope["method"] == "GET" and scope["path"].endswith("/models"):
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in FAKE_MODELS]
        await _send(send, 200, json.dumps({"object": "list", "data": data}).encode())
        return
    try:
        request = json.loads(raw or b"{}")
    except ValueError:
        request = {}
    model = request.get("model", "fake")
    if await _special(scope, send, model, request):
        return
    if scope["path"].endswith("/embeddings"):
        inputs = request.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        await _send(send, 200, _embedding_body(model, inputs))
    elif not request.get("stream"):
        await _send(send, 200, _chat_body(model, model != "fake-no-usage"))
    elif model == "fake-error-mid-stream":
        await _error_mid_stream(send, model)
    else:
        await _stream(send, model, request)


async def _special(scope, send, model: str, request: dict) -> bool:
    """The models that answer something else than a completion; True when one did."""
    if model == "fake-hang":
        await asyncio.sleep(3600)
    elif model == "fake-400":
        body = b'{"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}'
        await _send(send, 400, body)
    elif model == "fake-echo-auth":
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        reply = json.loads(_chat_body(model, True))
        reply["choices"][0]["message"]["content"] = auth
        await _send(send, 200, json.dumps(reply).encode())
    elif model == "fake-500":
        await _send(send, 500, b'{"error": {"message": "boom"}}')
    elif (status := _error_status(model)) is not None:
        await _error(scope, send, model, status)
    elif request.get("stream") and model == "fake-html-stream":
        await _send(send, 200, _HTML, b"text/html")
    elif request.get("stream") and model == "fake-json-stream":
        await _send(send, 200, _chat_body(model, True))
    else:
        return False
    return True


async def _stream(send, model: str, request: dict) -> None:
    slow = model == "fake-slow"
    tokens = _REPLY.split(" ") if not slow else [f"tok{i} " for i in range(STREAM_TOKENS)]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )

    async def event(body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})

    if slow:
        await asyncio.sleep(FIRST_TOKEN_DELAY)
    await event(_delta(model, {"role": "assistant", "content": ""}))
    for i, token in enumerate(tokens):
        await event(
            _delta(model, {"content": token if slow or i == len(tokens) - 1 else token + " "})
        )
        if slow:
            await asyncio.sleep(STREAM_SECONDS / STREAM_TOKENS)
    await event(_delta(model, {}, "stop"))
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    if include_usage and model not in ("fake-no-usage", "fake-no-done"):
        usage = {"prompt_tokens": 12, "completion_tokens": len(tokens)}
        usage["total_tokens"] = 12 + len(tokens)
        await event(_chunk(model, [], usage=_BAD_USAGE.get(model, usage)))
    await send({"type": "http.response.body", "body": b"" if model == "fake-no-done" else _DONE})


async def _error_mid_stream(send, model: str) -> None:
    events = [_delta(model, {"role": "assistant", "content": ""}), _delta(model, {"content": "Hi"})]
    error = {"error": {"message": f"CUDA out of memory on {UPSTREAM_SECRET}", "type": "server"}}
    events.append(b"data: " + json.dumps(error).encode() + b"\n\n")
    await _send(send, 200, b"".join(events), b"text/event-stream")


class ThreadedServer:
    """uvicorn serving `app` in a background thread on 127.0.0.1:<port>."""

    def __init__(self, port: int) -> None:
        import uvicorn

        self.port = port
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(port: int) -> ThreadedServer:
    return ThreadedServer(port).start()


if __name__ == "__main__":
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")
