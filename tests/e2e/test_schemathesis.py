"""The OpenAPI schema describes what is served: schemathesis fuzzes a live server (the production
path: `uvicorn aibaas.asgi:application` on PostgreSQL and Redis, so /v1 goes through the ASGI
handler) from its own /api/schema/, /api and /v1 alike, with a key that holds every scope.

Checks: no 5xx, every status documented for its operation, the documented content type, every
body (JSON and each server-sent event of a stream) valid against its schema. Bounded (a fixed
number of cases per operation, one worker, a fixed seed) so that it takes well under 90 s.
"""

import os
import re
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest

from accounts.actors import Actor
from aibaas.gateway.models import ModelKind
from billing.models import Plan
from keys import touch
from keys.services import api_key_create
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory
from tests.servers import server_process

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
SEED = 20261207
EXAMPLES_PER_OPERATION = 20
TIMEOUT_SECONDS = 240


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def all_scopes_key(db) -> str:
    """A raw key of an organization on the pro plan, with every scope, and the demo models."""
    organization = MembershipFactory(organization__plan=Plan.objects.get(slug="pro")).organization
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    embed = AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    ModelPriceFactory(model=chat, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    ModelPriceFactory(model=embed, input_per_million=Decimal("0.1"), output_per_million=0)
    issued = api_key_create(
        organization=organization,
        actor=Actor.for_system("tests"),
        name="schemathesis",
        scopes=["admin", "inference", "keys:write", "usage:read"],
    )
    return issued.raw_key


def _schemathesis(
    base: str, authorization: str, tmp_path, *options: str, schema: str | None = None
) -> str:
    """Run schemathesis against the live server at `base` (the schema: its /api/schema/, or
    the file `schema`); its output (asserted successful)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        schema or f"{base}/api/schema/",
        "--url",
        base,
        "--header",
        f"Authorization: {authorization}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "1",  # concurrent AST parsing in Hypothesis trips a CPython 3.11 bug
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--no-color",
        *options,
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,  # schemathesis's cache and reports stay out of the repository
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    return output


def _tested(output: str) -> tuple[int, int]:
    """(operations tested, operations selected) of a schemathesis run."""
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-5_000:]
    return int(tested[1]), int(selected[1])


def test_the_served_api_conforms_to_its_openapi_schema(all_scopes_key, tmp_path):
    with server_process() as base:
        output = _schemathesis(base, f"Bearer {all_scopes_key}", tmp_path)
    # Every operation of the schema ran, /v1 inference included (the operators' API too: a
    # tenant key gets its documented 403 there).
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested, _ = _tested(output)
    assert tested == int(selected[2]) >= 15, output[-5_000:]


OPERATOR_TOKEN = "op_schemathesis_" + "t" * 32


def test_the_operators_api_conforms_to_its_schema_for_the_operator_token(all_scopes_key, tmp_path):
    """The operators' API as an operator sees it: organizations created, listed, changed and
    reset from fuzzed input, every answer documented. (The schema is read with a tenant key:
    /api/schema/ is for the management API's callers, which the operator token is not.)"""
    MembershipFactory(organization__slug="acme")  # a slug the examples may hit
    with server_process({"OPERATOR_API_TOKEN": OPERATOR_TOKEN}) as base:
        schema = tmp_path / "schema.json"
        response = httpx.get(
            f"{base}/api/schema/?format=json",
            headers={"Authorization": f"Bearer {all_scopes_key}"},
            timeout=30,
        )
        schema.write_bytes(response.raise_for_status().content)
        output = _schemathesis(
            base,
            f"Bearer {OPERATOR_TOKEN}",
            tmp_path,
            "--include-path-regex",
            "^/api/admin/",
            schema=str(schema),
        )
    assert _tested(output) == (5, 5), output[-5_000:]
