"""create_key, revoke_key, rotate_key: the options and --json output of the contract."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import AuditAction, AuditEvent
from keys import format as key_format
from keys.models import ApiKey, ApiKeyStatus
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def v1_key(raw: str):
    return Client().get("/v1/key", **bearer(raw))


def test_create_key_with_every_option_prints_one_json_object(org):
    before = timezone.now()
    output = run(
        "create_key",
        "--org",
        org.slug,
        "--name",
        "ci runner",
        "--scopes",
        "inference,usage:read",
        "--models",
        "demo-small, demo-large",
        "--rpm",
        "5",
        "--rpd",
        "50",
        "--tpm",
        "500",
        "--tpd",
        "5000",
        "--expires-in",
        "30d",
        "--test",
        "--json",
    )
    data = json.loads(output)
    key = ApiKey.objects.get()
    assert data["id"] == key.pk
    assert data["key_id"] == key.key_id
    assert key_format.parse(data["key"]).key_id == key.key_id
    assert data["key"].startswith("sk_test_")
    assert data["name"] == "ci runner"
    assert data["organization"] == org.slug
    assert data["scopes"] == ["inference", "usage:read"]
    assert data["models"] == ["demo-large", "demo-small"]
    assert (data["requests_per_minute"], data["requests_per_day"]) == (5, 50)
    assert (data["tokens_per_minute"], data["tokens_per_day"]) == (500, 5000)
    assert data["test_mode"] is True
    assert data["hint"] == key.hint
    expires = parse_datetime(data["expires_at"])
    assert before + timedelta(days=30) <= expires <= timezone.now() + timedelta(days=30)
    assert data["key"] not in key.key_hash


def test_create_key_json_key_works_on_v1_key(org):
    data = json.loads(run("create_key", "--org", org.slug, "--name", "ci", "--rpm", "7", "--json"))
    response = v1_key(data["key"])
    assert response.status_code == 200
    assert response.json()["id"] == data["key_id"]
    assert response.json()["limits"]["requests_per_minute"] == 7
    assert response.json()["scopes"] == ["inference"]


def test_create_key_plain_output_ends_with_the_raw_key(org):
    lines = run("create_key", "--org", org.slug, "--name", "plain").strip().splitlines()
    raw = lines[-1]
    assert key_format.parse(raw) is not None
    assert "only time" in "\n".join(lines)
    assert v1_key(raw).status_code == 200


def test_create_key_is_audited_as_the_command(org):
    data = json.loads(run("create_key", "--org", org.slug, "--name", "x", "--json"))
    event = AuditEvent.objects.get(action=AuditAction.KEY_CREATED)
    assert event.target_id == data["key_id"]
    assert event.actor_label == "manage.py create_key"
    assert data["key"] not in json.dumps(event.metadata)


def test_create_key_for_an_unknown_org_is_a_command_error(db):
    with pytest.raises(CommandError, match="no-such-org"):
        run("create_key", "--org", "no-such-org", "--name", "x")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("expires_in", ["tomorrow", "30x", "-1d", "1.5d", "d30", "0"])
def test_create_key_with_a_bad_expiry_is_a_command_error(org, expires_in):
    with pytest.raises(CommandError):
        run("create_key", "--org", org.slug, "--name", "x", f"--expires-in={expires_in}")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "options",
    [
        ["--scopes", "root"],
        ["--scopes", ","],
        ["--rpm", "0"],
        ["--tpd", "-5"],
        ["--name", ""],
        ["--models", ",".join(f"m{i}" for i in range(101))],
    ],
    ids=["unknown-scope", "no-scope", "zero-rpm", "negative-tpd", "empty-name", "101-models"],
)
def test_create_key_with_bad_options_is_a_command_error(org, options):
    args = ["create_key", "--org", org.slug, "--name", "x", *options]
    with pytest.raises(CommandError):
        run(*args)
    assert not ApiKey.objects.exists()


def test_create_key_past_the_plans_cap_is_a_command_error(org, make_key):
    for number in range(3):
        make_key(org, name=f"k{number}")
    with pytest.raises(CommandError, match="allows 3 live API keys"):
        run("create_key", "--org", org.slug, "--name", "fourth")


def test_revoke_key_with_a_reason(issued):
    key_id = issued.api_key.key_id
    assert v1_key(issued.raw_key).status_code == 200
    output = run("revoke_key", key_id, "--reason", "leaked in CI logs")
    assert key_id in output and "revoked" in output
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert key.status == ApiKeyStatus.REVOKED
    assert key.revoked_reason == "leaked in CI logs"
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    assert (event.target_id, event.actor_label) == (key_id, "manage.py revoke_key")
    assert event.metadata["reason"] == "leaked in CI logs"
    response = v1_key(issued.raw_key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "key_revoked"


def test_revoke_key_twice_says_so_and_records_one_event(issued):
    run("revoke_key", issued.api_key.key_id)
    assert "already revoked" in run("revoke_key", issued.api_key.key_id)
    assert AuditEvent.objects.filter(action=AuditAction.KEY_REVOKED).count() == 1


@pytest.mark.parametrize("command", ["revoke_key", "rotate_key"])
@pytest.mark.parametrize("key_id", ["AAAAAAAAAAAA", "nope", "", "sk_live_whatever"])
def test_unknown_key_id_is_a_command_error(db, command, key_id):
    with pytest.raises(CommandError):
        run(command, key_id)


def test_rotate_key_with_zero_grace_json(issued):
    old_id = issued.api_key.key_id
    data = json.loads(run("rotate_key", old_id, "--grace", "0", "--json"))
    assert data["key_id"] != old_id
    assert data["rotated_from"] == old_id
    assert key_format.parse(data["key"]).key_id == data["key_id"]
    assert set(data) >= {"id", "key_id", "key", "scopes", "models", "expires_at"}
    old = v1_key(issued.raw_key)
    assert old.status_code == 401
    assert old.json()["error"]["code"] == "key_expired"
    new = v1_key(data["key"])
    assert new.status_code == 200
    assert new.json()["id"] == data["key_id"]


def test_rotate_key_default_grace_keeps_the_old_key_for_24_hours(issued, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    lines = run("rotate_key", issued.api_key.key_id).strip().splitlines()
    new_raw = lines[-1]
    assert v1_key(new_raw).status_code == 200
    assert v1_key(issued.raw_key).status_code == 200
    old = ApiKey.objects.get(pk=issued.api_key.pk)
    assert old.expires_at == now + timedelta(hours=24)
    time_machine.move_to(now + timedelta(hours=24, seconds=1), tick=False)
    assert v1_key(issued.raw_key).json()["error"]["code"] == "key_expired"
    assert v1_key(new_raw).status_code == 200


@pytest.mark.parametrize("grace", ["soon", "-1h", "1.5h", "h"])
def test_rotate_key_with_a_bad_grace_is_a_command_error(issued, grace):
    with pytest.raises(CommandError):
        run("rotate_key", issued.api_key.key_id, f"--grace={grace}")
    assert not ApiKey.objects.filter(rotated_from=issued.api_key).exists()


def test_rotate_key_of_a_revoked_key_is_a_command_error(issued):
    run("revoke_key", issued.api_key.key_id)
    with pytest.raises(CommandError, match="active"):
        run("rotate_key", issued.api_key.key_id)


def test_rotate_key_twice_is_a_command_error(issued):
    run("rotate_key", issued.api_key.key_id, "--grace", "1h")
    with pytest.raises(CommandError, match="already rotated"):
        run("rotate_key", issued.api_key.key_id, "--grace", "1h")
