"""The production topology of deploy/, started as checked in: nginx (deploy/nginx/aibaas.conf,
TLS with a certificate made here) → two app instances of two workers each (the command of
deploy/systemd/aibaas-web.service) → PostgreSQL and Redis, with one Celery worker and one beat
(deploy/systemd/aibaas-{worker,beat}.service), all with the environment of deploy/aibaas.env.
Only addresses, ports, paths and secrets are replaced. Checked through nginx: the openai SDK,
the client address limits and audit see, exact limits across instances, revocation across
instances, unbuffered streams, usage recorded by the worker; and `check --deploy`."""

import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
import pytest
from django.conf import settings

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent
from aibaas.gateway.models import AIModel, ModelKind
from billing.models import Plan
from keys.services import api_key_create
from metering.models import UsageEvent
from tests import servers
from tests.factories import AIModelFactory, MembershipFactory
from tests.servers import ROOT, free_port, production_server

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

DEPLOY = ROOT / "deploy"
VENV_BIN = "/opt/aibaas/.venv/bin/"
IP_RATE = 100  # per minute and client address (GATEWAY_IP_RATE), exact across instances
TOKEN_DELAY = 0.03  # DEMO_TOKEN_DELAY_SECONDS: a streamed token every 30 ms
# What tests/env_defaults.py relaxes for the live-server tests, and production does not.
RELAXED = (
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
)


class Topology(NamedTuple):
    url: str  # https://localhost:<port>, nginx
    instances: list[str]  # http://127.0.0.1:<port> of each app instance
    certificate: Path
    env: dict[str, str]


def unit_command(unit: str, state_dir: Path | None = None) -> list[str]:
    """ExecStart of a checked-in systemd unit, with this test run's virtualenv and state dir."""
    text = (DEPLOY / "systemd" / unit).read_text()
    command = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)
    command = command.replace(VENV_BIN, str(Path(sys.executable).parent) + "/")
    if state_dir is not None:
        command = command.replace("/var/lib/aibaas", str(state_dir))
    return shlex.split(command)


def deployment_env(**overrides: str) -> dict[str, str]:
    """deploy/aibaas.env, with `overrides` in place of its sample values."""
    values = {}
    for line in (DEPLOY / "aibaas.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    missing = set(overrides) - set(values) - {"DEMO_TOKEN_DELAY_SECONDS", "GATEWAY_IP_RATE"}
    assert not missing, f"not in deploy/aibaas.env: {missing}"
    values.update(overrides)
    return values


def nginx_site(upstreams: list[int], port: int, certificate: Path, key: Path) -> str:
    """deploy/nginx/aibaas.conf on this machine: its two instances, one HTTPS port, no port 80."""
    site = (DEPLOY / "nginx" / "aibaas.conf").read_text()
    instances = re.findall(r"^\s*server 10\.0\.0\.\d+:8000;.*$", site, re.M)
    assert len(instances) == len(upstreams) == 2
    for line, upstream in zip(instances, upstreams, strict=True):
        site = site.replace(line, f"    server 127.0.0.1:{upstream};")
    plain_http = re.search(r"server \{\s*listen 80;.*?\n\}\n", site, re.S).group(0)
    site = site.replace(plain_http, "")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    site = site.replace("listen [::]:443 ssl http2;", "")
    site = re.sub(r"ssl_certificate \S+;", f"ssl_certificate {certificate};", site)
    site = re.sub(r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};", site)
    return site.replace("server_name api.example.com;", "server_name localhost;")


def _start(stack: ExitStack, command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop() -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    stack.callback(stop)
    return process


def _wait_for_nginx(port: int, process: subprocess.Popen, logs: list[Path]) -> None:
    deadline = time.monotonic() + 30
    while True:
        output = "\n".join(log.read_text(errors="replace") for log in logs if log.exists())
        assert process.poll() is None, f"nginx exited with {process.returncode}: {output}"
        with suppress(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=1)
            return
        assert time.monotonic() < deadline, f"nginx did not answer: {output}"
        time.sleep(0.1)


UNSET = ("CACHE_URL", *RELAXED)


METRICS_TOKEN = "topology-metrics-token"


def deployment_envs(port: int, metrics_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """deploy/aibaas.env on this machine (its values, and the whole environment of a process)."""
    redis_url = os.environ["REDIS_URL"]
    env = deployment_env(
        METRICS_TOKEN=METRICS_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        # The suite's own: keys made here are verified there (keys/hashing.py).
        SECRET_KEY=settings.SECRET_KEY,
        ALLOWED_HOSTS="localhost,127.0.0.1",
        CSRF_TRUSTED_ORIGINS=f"https://localhost:{port}",
        DATABASE_URL=servers.test_database_url(),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CLIENT_IP_PROXIES="127.0.0.1",
        LOG_LEVEL="WARNING",
        DEMO_TOKEN_DELAY_SECONDS=str(TOKEN_DELAY),
        GATEWAY_IP_RATE=f"{IP_RATE}/m",
    )
    # The suite's own relaxations (plain-HTTP cookies, no redirect, no HSTS) go: production's
    # defaults apply. STATIC_MANIFEST stays off: no collectstatic here, and no page is served.
    return env, {k: v for k, v in {**os.environ, **env}.items() if k not in UNSET}


# Function scope: the processes stop before the test's tables are flushed (a flush racing the
# worker's writes deadlocks).
@pytest.fixture
def topology(transactional_db, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("needs Debian's nginx (apt-get install nginx; .ci/run installs it)")
    tmp = tmp_path
    tmp.chmod(0o755)
    certificate, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(certificate)),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    # The first instance shares its metrics directory with the Celery worker (one host).
    metrics_dirs = [tmp / "metrics-0", tmp / "metrics-1"]
    env, full_env = deployment_envs(port, metrics_dirs[0])
    # Each instance listens where production_server puts it (BIND of the file is a sample).
    instance_env = {k: v for k, v in env.items() if k not in ("BIND", "WEB_CONCURRENCY")}
    instance_env.update(dict.fromkeys(UNSET))
    with ExitStack() as stack:
        instances = [
            stack.enter_context(
                production_server(
                    workers=int(env["WEB_CONCURRENCY"]),
                    extra_env={**instance_env, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                )
            )
            for directory in metrics_dirs
        ]
        _start(stack, unit_command("aibaas-worker.service"), full_env, tmp / "worker.log")
        _start(stack, unit_command("aibaas-beat.service", tmp), full_env, tmp / "beat.log")
        upstream_ports = [int(server.url.rsplit(":", 1)[1]) for server in instances]
        (tmp / "site.conf").write_text(nginx_site(upstream_ports, port, certificate, key))
        (tmp / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/nginx-error.log warn;\nevents {{ worker_connections 512; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
            f"  proxy_temp_path {tmp}/proxy;\n  include {tmp}/site.conf;\n}}\n"
        )
        log = tmp / "nginx.log"
        process = _start(stack, [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf")], env, log)
        _wait_for_nginx(port, process, [log, tmp / "nginx-error.log"])
        yield Topology(
            f"https://localhost:{port}", [s.url for s in instances], certificate, full_env
        )


@pytest.fixture
def chat_models(db):
    for name, kind in (("demo-chat", ModelKind.CHAT), ("demo-embed", ModelKind.EMBEDDINGS)):
        if not AIModel.objects.filter(name=name).exists():
            AIModelFactory(name=name, kind=kind, test_mode_allowed=True)


def _key(*, organization=None, scopes=None, **limits) -> tuple[str, str, object]:
    organization = organization or MembershipFactory().organization
    extra = {"scopes": scopes} if scopes else {}
    created = api_key_create(
        organization=organization,
        name="topology",
        actor=Actor.for_system("tests"),
        **extra,
        **limits,
    )
    return created.raw_key, created.api_key.key_id, organization


def loopback_address() -> str:
    """A loopback address of this test's own, so that its per-address window is its own (the
    windows live in Redis for a minute, across test runs too)."""
    return "127." + ".".join(str(secrets.randbelow(250) + 2) for _ in range(3))


def _transport(topology: Topology, source: str) -> httpx.HTTPTransport:
    trusted = ssl.create_default_context(cafile=str(topology.certificate))
    return httpx.HTTPTransport(local_address=source, verify=trusted)


def _client(topology: Topology, source: str) -> httpx.Client:
    """An HTTPS client of nginx connecting from `source`."""
    return httpx.Client(base_url=topology.url, transport=_transport(topology, source), timeout=30)


def _recorded(key_id: str, served: int, timeout: float = 20.0) -> int:
    """Billable usage rows of a key once the Celery worker (run by beat) has drained them."""
    deadline = time.monotonic() + timeout
    while True:
        count = UsageEvent.objects.filter(key_id=key_id, billable=True).count()
        if count >= served or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_the_web_unit_runs_the_production_command_the_suite_tests():
    command = unit_command("aibaas-web.service")
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    assert command == [gunicorn, "-c", "deploy/gunicorn.conf.py", "aibaas.asgi:application"]
    beat = (DEPLOY / "systemd" / "aibaas-beat.service").read_text()
    worker = (DEPLOY / "systemd" / "aibaas-worker.service").read_text()
    assert " beat " in beat and " -B" not in worker and "--beat" not in worker


def check_the_openai_sdk_works_and_usage_is_recorded(topology: Topology) -> None:
    raw_key, key_id, _ = _key()
    transport = _transport(topology, loopback_address())
    client = openai.OpenAI(
        base_url=f"{topology.url}/v1",
        api_key=raw_key,
        http_client=httpx.Client(transport=transport, timeout=30),
        max_retries=0,
    )
    chat = client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert chat.choices[0].message.content
    embedding = client.embeddings.create(model="demo-embed", input="hello")
    assert len(embedding.data[0].embedding) > 0

    started = time.monotonic()
    arrivals = []
    stream = client.chat.completions.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "Tell me a long story"}],
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 10
    produced = (len(arrivals) - 1) * TOKEN_DELAY  # the app's own spacing of the chunks
    # Unbuffered: the first chunk arrived long before the last one was produced.
    assert arrivals[-1] - arrivals[0] >= 0.8 * produced, arrivals
    assert arrivals[0] < arrivals[-1] - 0.5 * produced, arrivals

    assert _recorded(key_id, 3) == 3  # chat, embedding, stream: drained by the worker


def check_the_client_address_is_the_real_one_for_limits_and_audit(topology: Topology) -> None:
    organization = MembershipFactory().organization
    organization.plan = Plan.objects.get(slug="enterprise")  # no limit but the per-IP one
    organization.save()
    raw_key, _, _ = _key(organization=organization)
    with _client(topology, loopback_address()) as client:

        def call(n: int) -> int:
            spoofed = {"X-Forwarded-For": f"10.{n % 250}.0.{n % 200}"}
            response = client.post(
                "/v1/embeddings",
                json={"model": "demo-embed", "input": "x"},
                headers={"Authorization": f"Bearer {raw_key}", **spoofed},
            )
            if response.status_code == 429:
                assert "from your address" in response.json()["error"]["message"]
            return response.status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, range(IP_RATE + 20)))
        # One window for the real address, however many addresses the client claimed.
        assert statuses.count(200) == IP_RATE, statuses
        assert statuses.count(429) == 20

    # The audit log records the real address of whoever acted, not what they claimed.
    admin_key, _, _ = _key(organization=organization, scopes=["admin"])
    _, target_id, _ = _key(organization=organization)
    source = loopback_address()
    with _client(topology, source) as client:
        response = client.post(
            f"/api/keys/{target_id}/revoke",
            headers={"Authorization": f"Bearer {admin_key}", "X-Forwarded-For": "6.6.6.6"},
        )
    assert response.status_code == 200, response.text
    event = AuditEvent.objects.get(organization=organization, action=AuditAction.KEY_REVOKED)
    assert event.ip == source


def check_rate_limits_are_exact_across_the_two_instances(topology: Topology) -> None:
    raw_key, key_id, _ = _key(requests_per_minute=10)
    with _client(topology, loopback_address()) as client:

        def call(_: int) -> int:
            return client.post(
                "/v1/embeddings",
                json={"model": "demo-embed", "input": "x"},
                headers={"Authorization": f"Bearer {raw_key}"},
            ).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, range(30)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20
    assert _recorded(key_id, 10) == 10


def check_a_revocation_on_one_instance_is_honoured_by_the_other_within_1s(
    topology: Topology,
) -> None:
    raw_key, key_id, _ = _key(scopes=["admin", "inference"])
    body = {"model": "demo-embed", "input": "x"}
    # Straight to each instance, as nginx would (its address, X-Forwarded-Proto: https).
    direct = {"Authorization": f"Bearer {raw_key}", "X-Forwarded-Proto": "https"}
    with httpx.Client(timeout=10) as client:
        for base in topology.instances:
            for _ in range(4):  # both workers of each instance, most likely
                assert client.post(f"{base}/v1/embeddings", json=body, headers=direct).is_success
        first, second = topology.instances
        revoked = client.post(f"{first}/api/keys/{key_id}/revoke", headers=direct)
        assert revoked.status_code == 200, revoked.text
        started = time.monotonic()
        while True:
            response = client.post(f"{second}/v1/embeddings", json=body, headers=direct)
            if response.status_code == 401:
                break
            assert time.monotonic() - started < 1.0, "the other instance still serves the key"
            time.sleep(0.05)
        assert response.json()["error"]["code"] == "key_revoked"


def check_each_instance_exports_its_workers_and_the_worker_of_its_host(topology: Topology) -> None:
    """/metrics of an instance merges its two workers (PROMETHEUS_MULTIPROC_DIR), and on the
    first instance the Celery worker's too (same host, same directory): the usage lag."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = []
    for base in topology.instances:
        response = httpx.get(
            f"{base}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}", "X-Forwarded-Proto": "https"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
        totals.append(
            {
                name: sum(s.value for s in samples if s.name == name)
                for name in ("aibaas_v1_requests_total", "aibaas_usage_event_lag_seconds_count")
            }
        )
    assert all(total["aibaas_v1_requests_total"] > 0 for total in totals), totals
    assert totals[0]["aibaas_usage_event_lag_seconds_count"] > 0, totals
    assert totals[1]["aibaas_usage_event_lag_seconds_count"] == 0, totals


def test_the_production_topology_through_nginx(topology, chat_models):
    check_the_openai_sdk_works_and_usage_is_recorded(topology)
    check_the_client_address_is_the_real_one_for_limits_and_audit(topology)
    check_rate_limits_are_exact_across_the_two_instances(topology)
    check_a_revocation_on_one_instance_is_honoured_by_the_other_within_1s(topology)
    check_each_instance_exports_its_workers_and_the_worker_of_its_host(topology)


def test_check_deploy_is_clean_with_the_deployment_settings(db, tmp_path):
    _, env = deployment_envs(443, tmp_path)
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
