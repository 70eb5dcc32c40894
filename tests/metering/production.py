"""The production setup for the durability tests: gunicorn with 2 uvicorn workers on the test
database, a private redis-server run with deploy/redis.conf, and the drain that Celery beat runs
(metering.tasks.drain_usage_events → usage_drain), here on a thread of the test."""

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx

from metering.services import usage_drain
from tests.servers import ROOT, free_port, test_database_url

REDIS_CONF = ROOT / "deploy" / "redis.conf"


@contextmanager
def gunicorn_server(extra_env: dict, workers: int = 2, startup_timeout: float = 30.0):
    """Yield (base URL, master process) of `gunicorn -k uvicorn_worker.UvicornWorker -w 2`."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": test_database_url(), **extra_env}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "aibaas.asgi:application",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while len(worker_pids(process.pid)) < workers or not _healthy(base):
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start in time")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def worker_pids(master: int) -> set[int]:
    """The pids of gunicorn's workers (the master's children)."""
    path = f"/proc/{master}/task/{master}/children"
    try:
        with open(path) as children:
            return {int(pid) for pid in children.read().split()}
    except FileNotFoundError:
        return set()


class Drainer:
    """What Celery beat does in production, every `every` seconds on a thread: usage_drain.
    A failing run (Redis down) is followed by the next one, as a beat's would be."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self.stop = threading.Event()
        self.failures = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(self.every):
                try:
                    usage_drain(batch_size=200)
                except Exception:
                    self.failures += 1
        finally:
            connection.close()

    def __enter__(self) -> "Drainer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
