"""The processes a bench starts (upstream, app server, Celery worker) and waits for."""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LOG_DIR = ROOT / ".bench"  # the servers' logs of the last run (git-ignored)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (a local URL we built)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(command: list[str], env: dict, name: str):
    """`command` running in a session of its own, its output in .bench/<name>.log; stopped
    (SIGTERM, then SIGKILL after 15 s) on exit."""
    LOG_DIR.mkdir(exist_ok=True)
    log = open(LOG_DIR / f"{name}.log", "w")  # noqa: SIM115 (closed below)
    child = subprocess.Popen(  # noqa: S603 (our own command line)
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield child
    finally:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(child.pid, signal.SIGKILL)
        log.close()


def wait_for_usage_drain(redis_url: str, timeout: float = 60.0) -> int:
    """Wait until the usage stream is empty (the Celery worker drained it); what is left."""
    import redis

    from metering.usage.events import stream_key

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = client.xlen(stream_key())
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)
    finally:
        client.close()
