"""Real server processes on the test database: `server_process` is one
`uvicorn aibaas.asgi:application` (several make several instances sharing Redis and PostgreSQL);
`production_server` is the production command (gunicorn, deploy/gunicorn.conf.py)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """DATABASE_URL of the database this test run uses (pytest-django's test_ database)."""
    s = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("server processes share the database: PostgreSQL only")
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@contextmanager
def server_process(extra_env: dict | None = None, startup_timeout: float = 30.0):
    """Yield the base URL of a new aibaas server process; stop it afterwards. `extra_env` may
    name another DATABASE_URL (e.g. a SQLite file) and unset variables with None values."""
    port = free_port()
    env = dict(os.environ)
    extra_env = extra_env or {}
    if "DATABASE_URL" not in extra_env:
        env["DATABASE_URL"] = test_database_url()
    for name, value in extra_env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "aibaas.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
        # X-Forwarded-For is the app's to judge (CLIENT_IP_PROXIES), not uvicorn's default.
        "--no-proxy-headers",
        "--log-level",
        "warning",
    ]
    # Output to a file, never an unread pipe: a server that logs a line per request (the /v1
    # request log) would fill the pipe and block mid-response.
    output_file = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=output_file, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                output_file.seek(0)
                output = output_file.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output_file.close()


class ProductionServer(NamedTuple):
    url: str  # http://127.0.0.1:<port>
    pid: int  # the gunicorn master (its workers are its children)
    log: Path  # the server's stdout and stderr, together

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def production_server(workers: int = 2, extra_env: dict | None = None):
    """Run THE production command, `gunicorn -c deploy/gunicorn.conf.py aibaas.asgi:application`,
    on the test database; yield a ProductionServer (url, master pid, log file); stop it after.

    The signature stays this simple on purpose: everything else is environment, as in
    production (`extra_env`, e.g. {"CLIENT_IP_PROXIES": "127.0.0.1"}; a None value unsets a
    variable of this process's environment, e.g. {"REDIS_URL": None}). The server runs in its
    own session, so tests may kill its workers (children of `pid`) or the master itself; the
    whole process group is killed at the end whatever state it is in."""
    port = free_port()
    env = dict(os.environ)
    env["DATABASE_URL"] = test_database_url()
    env.update({"BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers)})
    for name, value in (extra_env or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    log_dir = Path(tempfile.mkdtemp(prefix="aibaas-gunicorn-"))
    log_path = log_dir / "server.log"
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "aibaas.asgi:application",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ProductionServer(f"http://127.0.0.1:{port}", process.pid, log_path)
    try:
        _wait_until_healthy(process, server.url, 60.0, server.output)
        yield server
    finally:
        with suppress(subprocess.TimeoutExpired):
            process.terminate()
            process.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers a killed master left behind
        process.wait()
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_until_healthy(process, base: str, timeout: float, output) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{output()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not start in time:\n{output()}")
        time.sleep(0.1)
