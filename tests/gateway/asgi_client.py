"""A test client for aibaas.asgi.application (the lean /v1 handler in front of Django) with the
calling convention of Django's test Client, so one test can run against both paths.

Requests go through httpx's ASGITransport in this process: the ASGI application as uvicorn
would call it, without a socket. `HTTP_X_FOO="v"` keyword arguments become `X-Foo: v` headers.
"""

import json as jsonlib

import httpx
from asgiref.sync import async_to_sync

from aibaas.gateway import streaming

BASE = "http://127.0.0.1"


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
            transport = httpx.ASGITransport(app=self.application, client=("127.0.0.1", 50000))
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
