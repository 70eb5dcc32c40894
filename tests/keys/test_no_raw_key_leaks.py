"""A raw key is shown once and then exists nowhere: not in any table, log, SQL, cache or admin.

Keys are created, used, rotated and revoked through every door (the API with a session, a JWT
and a key, the commands, the dashboard, the admin); then everything is searched for the raw
keys and for their secret parts alone.
"""

import json
import logging
import pickle
import re
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_redis.cache import RedisCache

from accounts.models import AuditAction, AuditEvent, Role, User
from billing.models import Plan
from keys import touch
from keys.models import ApiKey
from tests.factories import PASSWORD
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db

RAW_IN_HTML = re.compile(r'data-testid="raw-key"[^>]*value="([^"]+)"')


def secret_of(raw: str) -> str:
    return raw[21:64]


def assert_absent(raw_keys: list[str], haystack: str, where: str) -> None:
    assert raw_keys
    for raw in raw_keys:
        assert raw not in haystack, f"a raw key is in {where}"
        assert secret_of(raw) not in haystack, f"a key's secret is in {where}"


def all_loggers_at_debug(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)


def database_dump() -> str:
    """Every value of every row of every model's table, plus every table of the schema."""
    parts = []
    for model in apps.get_models(include_auto_created=True):
        if not model._meta.managed or model._meta.proxy:
            continue
        fields = [field.attname for field in model._meta.concrete_fields]
        parts.extend(repr(row) for row in model._base_manager.values_list(*fields))
    parts.extend(repr(session.get_decoded()) for session in Session.objects.all())
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            parts.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(parts)


def cache_dump() -> str:
    """Every entry of the default cache: Redis, in-process, or both (a failover wrapper)."""
    parts = []
    backends = [caches["default"]]
    while backends:
        backend = backends.pop()
        backends += [
            getattr(backend, name) for name in ("primary", "fallback") if hasattr(backend, name)
        ]
        if isinstance(backend, RedisCache):
            parts.append(repr({key: backend.get(key) for key in backend.keys("*")}))
        elif isinstance(backend, LocMemCache):
            parts.append(repr({key: pickle.loads(value) for key, value in backend._cache.items()}))
    assert parts, f"cannot read a {type(caches['default']).__name__}"
    return "\n".join(parts)


def logs_dump(caplog) -> str:
    """Every record of the test so far (setup and call), formatted with its traceback."""
    records = captured_records(caplog)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return "\n".join(
        [formatter.format(record) for record in records]
        + [repr(vars(record)) for record in records]
    )


def captured_records(caplog) -> list[logging.LogRecord]:
    return caplog.get_records("setup") + caplog.get_records("call")


def command(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


class Flow:
    """Keys made and used through every door; `raw_keys` are all the keys ever shown."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.raw_keys: list[str] = []
        self.responses: list = []  # responses that must not contain any key

    def shown(self, raw: str) -> str:
        self.raw_keys.append(raw)
        return raw

    def use(self, raw: str, expect: int) -> None:
        client = Client(REMOTE_ADDR="203.0.113.50")
        for headers in (bearer(raw), {"HTTP_X_API_KEY": raw}):
            response = client.get("/v1/key", **headers)
            assert response.status_code == expect, response.content
            self.responses.append(response)
        mangled = client.get("/v1/key", **bearer(raw + "x"))
        assert mangled.status_code == 401
        self.responses.append(mangled)

    def over_the_api_with_a_session(self, client: Client) -> None:
        created = client.post(
            "/api/keys", {"name": "session key"}, content_type="application/json"
        ).json()
        raw = self.shown(created["key"])
        self.use(raw, 200)
        self.responses.append(
            client.patch(
                f"/api/keys/{created['key_id']}",
                {"name": "renamed"},
                content_type="application/json",
            )
        )
        self.responses.append(client.get("/api/keys"))
        rotated = client.post(
            f"/api/keys/{created['id']}/rotate",
            {"grace_seconds": 0},
            content_type="application/json",
        ).json()
        successor = self.shown(rotated["key"])
        self.use(raw, 401)
        self.use(successor, 200)
        self.responses.append(
            client.post(
                f"/api/keys/{rotated['key_id']}/revoke",
                # People paste keys into free text: "revoking sk_live_..."
                {"reason": f"revoking {successor}"},
                content_type="application/json",
            )
        )
        self.use(successor, 401)
        self.responses.append(client.get("/api/audit"))

    def over_the_api_with_jwt_and_a_key(self) -> None:
        client = Client()
        token = client.post(
            "/api/auth/token",
            {"email": self.owner.user.email, "password": PASSWORD},
            content_type="application/json",
        ).json()["access"]
        jwt = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        created = client.post(
            "/api/keys",
            {"name": "automation", "scopes": ["inference", "keys:write"]},
            content_type="application/json",
            **jwt,
        ).json()
        manager = self.shown(created["key"])
        made = client.post(
            "/api/keys",
            {"name": "made by a key"},
            content_type="application/json",
            **bearer(manager),
        ).json()
        self.use(self.shown(made["key"]), 200)
        self.responses.append(
            client.post(
                f"/api/keys/{made['key_id']}/revoke",
                {"reason": "done"},
                content_type="application/json",
                **bearer(manager),
            )
        )
        self.responses.append(
            client.post(
                f"/api/keys/{created['key_id']}/revoke", content_type="application/json", **jwt
            )
        )

    def with_commands(self) -> None:
        slug = self.owner.organization.slug
        created = json.loads(command("create_key", "--org", slug, "--name", "cmd", "--json"))
        raw = self.shown(created["key"])
        self.use(raw, 200)
        rotated = json.loads(command("rotate_key", created["key_id"], "--grace", "0", "--json"))
        successor = self.shown(rotated["key"])
        self.use(raw, 401)
        self.use(successor, 200)
        command("revoke_key", rotated["key_id"], "--reason", f"leaked: {successor}")
        self.use(successor, 401)

    def on_the_dashboard(self, client: Client) -> None:
        page = client.post("/dashboard/keys/new/", {"name": "dash", "scopes": ["inference"]})
        raw = self.shown(RAW_IN_HTML.search(page.content.decode()).group(1))
        self.use(raw, 200)
        key_id = raw[8:20]
        self.responses.append(client.get("/dashboard/keys/"))
        self.responses.append(client.get(f"/dashboard/keys/{key_id}/rotate/"))
        page = client.post(f"/dashboard/keys/{key_id}/rotate/", {"grace": "0"})
        successor = self.shown(RAW_IN_HTML.search(page.content.decode()).group(1))
        self.use(successor, 200)
        self.responses.append(
            client.post(
                f"/dashboard/keys/{successor[8:20]}/revoke/",
                {"reason": f"pasted {successor} by mistake"},
                follow=True,
            )
        )
        self.responses.append(client.get("/dashboard/keys/?status=revoked"))
        self.use(successor, 401)


@pytest.fixture
def flow(owner, caplog) -> Flow:
    all_loggers_at_debug(caplog)
    owner.organization.plan = Plan.objects.get(slug="pro")  # room for every key of the flow
    owner.organization.save()
    flow = Flow(owner)
    session = Client()
    session.force_login(owner.user)
    with CaptureQueriesContext(connection) as queries:
        flow.over_the_api_with_a_session(session)
        flow.over_the_api_with_jwt_and_a_key()
        flow.with_commands()
        flow.on_the_dashboard(session)
        touch.flush()
    flow.sql = "\n".join(query["sql"] for query in queries.captured_queries)
    assert len(set(flow.raw_keys)) == 8
    assert ApiKey.objects.filter(organization=owner.organization).count() == 8
    return flow


def test_after_creating_using_rotating_and_revoking_no_table_holds_a_raw_key(flow):
    events = AuditEvent.objects.filter(action__startswith="key.")
    assert events.filter(action=AuditAction.KEY_CREATED).count() == 8
    assert events.filter(action=AuditAction.KEY_ROTATED).count() == 3
    assert events.filter(action=AuditAction.KEY_REVOKED).count() == 5
    assert events.filter(action=AuditAction.KEY_UPDATED).count() == 1
    assert ApiKey.objects.exclude(last_used_at=None).count() == 0  # the test transaction hides
    assert_absent(flow.raw_keys, database_dump(), "the database")


def test_pasted_keys_in_revocation_reasons_are_redacted(flow):
    reasons = list(
        ApiKey.objects.exclude(revoked_reason="").values_list("revoked_reason", flat=True)
    )
    assert any("[redacted key]" in reason for reason in reasons), reasons


def test_after_creating_using_rotating_and_revoking_no_log_or_sql_holds_a_raw_key(flow, caplog):
    records = captured_records(caplog)
    # The capture worked: requests (401s), SQL and the key services were logged.
    assert any(record.name == "django.request" for record in records)
    assert any(record.name == "django.db.backends" for record in records)
    assert_absent(flow.raw_keys, logs_dump(caplog), "the logs")
    assert_absent(flow.raw_keys, flow.sql, "the SQL sent to the database")


def test_after_creating_using_rotating_and_revoking_no_cache_entry_holds_a_raw_key(flow):
    dump = cache_dump()
    assert "ak:{" in dump  # the verification entries were searched
    assert_absent(flow.raw_keys, dump, "the cache")


def test_no_response_but_the_show_once_ones_contains_a_raw_key(flow):
    for response in flow.responses:
        assert_absent(flow.raw_keys, response.content.decode(), response.wsgi_request.path)


# --- admin -----------------------------------------------------------------------------------


@pytest.fixture
def operator(member_factory) -> Client:
    membership = member_factory(role=Role.OWNER)
    User.objects.filter(pk=membership.user_id).update(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=membership.user_id))
    return client


def test_admin_change_page_shows_neither_the_key_nor_its_hash(operator, issued, caplog):
    all_loggers_at_debug(caplog)
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    Client().get("/v1/key", **bearer(issued.raw_key))
    pages = [
        operator.get(f"/admin/keys/apikey/{key.pk}/change/"),
        operator.get("/admin/keys/apikey/", {"q": key.key_id}),
        operator.get("/admin/keys/apikey/", {"status": "active"}),
        operator.get("/admin/accounts/auditevent/"),
    ]
    for page in pages:
        assert page.status_code == 200, page.wsgi_request.get_full_path()
        html = page.content.decode()
        assert_absent([issued.raw_key], html, page.wsgi_request.get_full_path())
        assert key.key_hash not in html
        assert key.key_hash.split("$")[-1] not in html  # the hash's digest alone
        assert "key_hash" not in html
        assert "$argon2" not in html
    change_page = pages[0].content.decode()
    assert key.hint in change_page and key.key_id in change_page
    assert_absent([issued.raw_key], logs_dump(caplog), "the logs")
