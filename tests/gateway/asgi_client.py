"""In-process clients of aibaas.asgi.application, the production entry point (the /v1 handler in
front of Django): the one way tests reach /v1.

`AsgiTestClient` has the calling convention of Django's test Client (`HTTP_X_FOO="v"` keyword
arguments become `X-Foo: v` headers); `SyncAsgiTransport` is an httpx transport for a sync
client (the openai package's `OpenAI(http_client=httpx.Client(transport=...))`). Both go through
httpx's ASGITransport in this process: the ASGI application as uvicorn would call it, without a
socket, on this process's (test) database.
"""

import json as jsonlib

import httpx
from asgiref.sync import async_to_sync

from aibaas.gateway import streaming

BASE = "http://127.0.0.1"
PEER = ("127.0.0.1", 50000)


class AsgiResponse:
    def __init__(self, response: httpx.Response, chunks: list[bytes]) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = b"".join(chunks)
        self.chunks = chunks

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.headers

    def json(self):
        return jsonlib.loads(self.content)


def _headers(extra: dict) -> dict[str, str]:
    headers = {}
    for name, value in extra.items():
        if name.startswith("HTTP_"):
            headers[name[5:].replace("_", "-").title()] = value
        elif name == "headers":
            headers.update(value)
    return headers


class AsgiTestClient:
    def __init__(self) -> None:
        from aibaas.asgi import application

        self.application = application

    def request(self, method: str, path: str, *, content=None, headers=None) -> AsgiResponse:
        async def run():
            transport = httpx.ASGITransport(app=self.application, client=PEER)
            async with (
                httpx.AsyncClient(transport=transport, base_url=BASE) as client,
                client.stream(method, path, content=content, headers=headers) as reply,
            ):
                chunks = [chunk async for chunk in reply.aiter_raw()]
            await streaming.drain_background()
            return AsgiResponse(reply, chunks)

        return async_to_sync(run)()

    def get(self, path: str, **extra) -> AsgiResponse:
        return self.request("GET", path, headers=_headers(extra))

    def post(self, path: str, data=None, content_type: str = "", **extra) -> AsgiResponse:
        headers = _headers(extra)
        if content_type:
            headers["Content-Type"] = content_type
        if isinstance(data, dict | list):
            data = jsonlib.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        return self.request("POST", path, content=data or b"", headers=headers)


class SyncAsgiTransport(httpx.BaseTransport):
    """An httpx transport for sync clients: each request runs the application to its end (the
    reply read whole, a stream included, and its usage event recorded) before it returns."""

    def __init__(self) -> None:
        from aibaas.asgi import application

        self.transport = httpx.ASGITransport(app=application, client=PEER)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def run() -> httpx.Response:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=content
            )
            reply = await self.transport.handle_async_request(inner)
            body = await reply.aread()
            await streaming.drain_background()
            return httpx.Response(reply.status_code, headers=reply.headers, content=body)

        return async_to_sync(run)()
