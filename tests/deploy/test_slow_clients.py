"""Slow and oversized requests against the production command, over raw sockets: headers and
bodies are bounded in time (408 or closed), request lines and headers in size (414/431)."""

import select
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.servers import production_server

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TIMEOUT = 1.0  # HTTP_HEADER_TIMEOUT and HTTP_BODY_TIMEOUT of the server under test
SLACK = 4.0


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    env = {
        "HTTP_HEADER_TIMEOUT": str(TIMEOUT),
        "HTTP_BODY_TIMEOUT": str(TIMEOUT),
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "off",
    }
    with django_db_blocker.unblock(), production_server(workers=1, extra_env=env) as running:
        yield running


def _connect(server) -> socket.socket:
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT + SLACK + 2)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _read_response(sock: socket.socket) -> bytes:
    """One whole response of a keep-alive connection (headers and Content-Length body): a
    response may arrive in several segments, and what is left of it must not be read as the
    answer to the next request."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_partial_headers_get_408_and_the_connection_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer, waited = _read_until_closed(sock)
    assert _status(answer) == 408
    assert waited < TIMEOUT + SLACK


def test_headers_dripped_a_byte_at_a_time_are_timed_out_all_the_same(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        try:
            while time.monotonic() - started < TIMEOUT + SLACK:
                sock.sendall(b"X")  # one endless header line, a byte every 100 ms
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, _ = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    assert elapsed < TIMEOUT + SLACK + 0.5


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server):
    with _connect(server) as sock:
        answer, waited = _read_until_closed(sock)
    assert answer == b""
    assert waited < TIMEOUT + SLACK


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/auth/token"])
def test_a_partial_body_gets_408_and_the_connection_closed(server, path):
    with _connect(server) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n".encode()
            + b'{"model": '
        )
        answer, waited = _read_until_closed(sock)
    assert _status(answer) == 408
    assert waited < TIMEOUT + SLACK


def test_a_whole_request_sent_in_pieces_within_the_limits_is_served(server):
    with _connect(server) as sock:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.2)
        first = _read_response(sock)
        # The same keep-alive connection: the next request has its own header time.
        time.sleep(TIMEOUT * 0.6)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        second, _ = _read_until_closed(sock)
    assert _status(first) == 200
    assert _status(second) == 200


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (f"GET /healthz?{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n", 431),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"X-N{i}: 1\r\n" for i in range(101))
            + "\r\n",
            431,
        ),
        # One header that never ends: refused once more than any valid head was sent.
        ("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: " + "a" * 2_000_000, 431),
    ],
    ids=["long-request-line", "big-header", "too-many-headers", "endless-headers"],
)
def test_oversized_request_lines_and_headers_are_refused(server, request_head, status):
    data = request_head.encode()
    with _connect(server) as sock:
        # In pieces, stopping at the first answer: a server that closes on unread data resets
        # the connection, and a reset can drop the answer before it is read.
        for start in range(0, len(data), 16384):
            sock.sendall(data[start : start + 16384])
            if select.select([sock], [], [], 0)[0]:
                break
        answer, _ = _read_until_closed(sock)
    assert _status(answer) == status


def test_the_next_request_on_a_keep_alive_connection_is_bounded_too(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _status(_read_response(sock)) == 200
        sock.sendall(b"GE")  # the next request starts, and stops
        answer, waited = _read_until_closed(sock)
    assert _status(answer) == 408
    assert waited < TIMEOUT + SLACK
