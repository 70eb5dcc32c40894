"""A private redis-server process for tests that stop and restart Redis (outages, kill -9).

`RedisProcess(conf=...)` runs it with a config file (deploy/redis.conf: the production
settings, persistence included); the port and the data directory are the test's own, and stay
the same across a restart, so a restarted server loads what the killed one wrote."""

import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.servers import free_port

NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


class RedisProcess:
    def __init__(self, conf: Path | None = None) -> None:
        self.conf = conf
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="aibaas-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Options after the file override it: this test's port, loopback and directory.
        settings = (str(self.conf),) if self.conf is not None else NO_PERSISTENCE
        self.process = subprocess.Popen(
            [
                "redis-server",
                *settings,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """kill -9: nothing flushed, nothing saved on the way out."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


@contextmanager
def redis_process(conf: Path | None = None):
    server = RedisProcess(conf)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
