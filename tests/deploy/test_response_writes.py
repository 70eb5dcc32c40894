"""One send per small response (aibaas/appserver_writes.py): the head is held for the first
body part, released alone at the next turn of the event loop, released before a close; nothing
is reordered. Against a recording transport, and against the production command."""

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from aibaas.appserver_writes import HeadWithBody
from tests.servers import production_server


class Recording:
    """What a cycle's writes reach: asyncio's transport interface, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def _run(steps) -> Recording:
    async def main() -> Recording:
        transport = Recording()
        await steps(HeadWithBody(transport, asyncio.get_running_loop()), transport)
        return transport

    return asyncio.run(main())


def test_the_head_goes_out_with_the_first_body_part_in_one_write():
    async def steps(wrapped, transport):
        wrapped.write(b"HEAD")
        assert transport.writes == []
        wrapped.write(b"BODY")
        wrapped.write(b"MORE")
        await asyncio.sleep(0)  # the next turn releases nothing: nothing is held

    assert _run(steps).writes == [b"HEADBODY", b"MORE"]


def test_a_head_whose_body_does_not_follow_goes_out_alone_at_the_next_turn():
    async def steps(wrapped, transport):
        wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        wrapped.write(b"HEAD")
        wrapped.write(b"BODY")

    assert _run(steps).writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"HEAD", b"BODY"]


def test_a_close_sends_what_is_held_first_and_the_turn_then_sends_nothing():
    async def steps(wrapped, transport):
        wrapped.write(b"HEAD")
        wrapped.close()
        await asyncio.sleep(0)

    recorded = _run(steps)
    assert recorded.writes == [b"HEAD"]
    assert recorded.closed


def test_anything_else_is_the_transports_own():
    async def steps(wrapped, transport):
        assert wrapped.get_write_buffer_size() == 0
        assert wrapped.is_closing() is False

    _run(steps)


# --- the production command -----------------------------------------------------------------


def _write_calls(pid: int) -> int:
    """write(2)-family calls the process has made (/proc/PID/io: uvloop sends with write)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def _worker(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_small_response_is_one_write_and_pipelined_answers_keep_their_order():
    # Without Redis: its commands are writes of the worker too (and a per-IP count shared
    # with later tests of the same address).
    env = {"LOG_LEVEL": "WARNING", "ACCESS_LOG": "off", "REDIS_URL": None}
    with production_server(workers=1, extra_env=env) as server:
        worker = _worker(server.pid)
        # /v1 without a key: answered by the event loop alone (no thread, database or Redis
        # whose own writes would be counted too).
        with httpx.Client(timeout=10) as client:  # one keep-alive connection
            for _ in range(20):
                assert client.get(f"{server.url}/v1/models").status_code == 401
            before = _write_calls(worker)
            requests = 200
            for _ in range(requests):
                assert client.get(f"{server.url}/v1/models").status_code == 401
            per_response = (_write_calls(worker) - before) / requests
        # Two (head, then body) without HeadWithBody; a little over one allows for the rare
        # background write of the worker (a log line, a heartbeat) during the run.
        assert per_response < 1.3, per_response

        # Two requests in one segment: two whole answers, in order, on one connection.
        parts = urlsplit(server.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /no-such-page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        first, _, rest = data.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
        assert first.startswith(b"200 "), data
        assert rest.startswith(b"404 "), data
