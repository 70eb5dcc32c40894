"""Django's security decisions for the /v1 handler (aibaas/gateway/security.py): the Host check
is Django's get_host, remembered for accepted hosts only and forgotten when settings change."""

import pytest

from aibaas.gateway import security
from aibaas.gateway.security import Security, SecurityRequest
from tests.gateway.asgi_client import AsgiTestClient


def request_for(host: str) -> SecurityRequest:
    scope = {"path": "/v1/models", "method": "GET", "scheme": "http", "server": ("10.0.0.1", 80)}
    return SecurityRequest(scope, {"host": host}, "")


@pytest.mark.parametrize(
    ("allowed", "host", "verdict"),
    [
        (["api.example.com"], "api.example.com", True),
        (["api.example.com"], "api.example.com:8443", True),
        (["api.example.com"], "evil.example", False),
        ([".example.com"], "a.b.example.com", True),
        ([".example.com"], "example.com.evil", False),
        (["api.example.com"], "api.example.com@evil", False),
    ],
)
def test_the_host_check_is_djangos(settings, allowed, host, verdict):
    settings.ALLOWED_HOSTS = allowed
    checks = Security()
    assert checks.allowed_host(request_for(host)) is verdict
    assert checks.allowed_host(request_for(host)) is verdict  # remembered or asked again: same


def test_only_accepted_hosts_are_remembered_and_only_so_many(settings, monkeypatch):
    settings.ALLOWED_HOSTS = [".example.com"]
    monkeypatch.setattr(security, "MAX_HOSTS", 3)
    checks = Security()
    for i in range(5):
        assert checks.allowed_host(request_for(f"h{i}.example.com"))
    assert not checks.allowed_host(request_for("evil.example"))
    assert checks._allowed == {"h0.example.com", "h1.example.com", "h2.example.com"}
    assert checks.allowed_host(request_for("h4.example.com"))  # past the bound: asked again


@pytest.mark.django_db
def test_a_host_accepted_before_a_settings_change_is_refused_after_it(settings):
    """The handler's Security (and what it remembered) goes with the settings it was made
    under."""
    settings.ALLOWED_HOSTS = ["api.example.com"]
    gateway = AsgiTestClient()
    first = gateway.request("GET", "/v1/models", headers={"Host": "api.example.com"})
    assert first.status_code == 401  # past the Host check: no key
    settings.ALLOWED_HOSTS = ["other.example.com"]
    second = gateway.request("GET", "/v1/models", headers={"Host": "api.example.com"})
    assert second.status_code == 400
    assert second.json()["error"]["code"] == "invalid_host"


def test_meta_answers_as_djangos_asgi_request_for_every_header():
    """SecurityRequest.META reads HTTP_* from the headers when asked: the same answers as the
    META Django's own ASGIRequest builds, for the ways Django reads it ([], in, get)."""
    from django.core.handlers.asgi import ASGIRequest

    headers = {
        "host": "api.example.com:8443",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "fwd.example.com",
        "x-forwarded-port": "443",
        "user-agent": "sdk/1.0",
    }
    scope = {
        "type": "http",
        "path": "/v1/models",
        "method": "GET",
        "scheme": "http",
        "server": ("10.0.0.1", 8000),
        "query_string": b"a=1",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    django_meta = ASGIRequest(scope, None).META
    meta = SecurityRequest(scope, headers, "a=1").META
    asked = [name for name in django_meta if name.startswith("HTTP_")]
    asked += ["QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "HTTP_X_ABSENT", "CONTENT_TYPE"]
    for name in asked:
        assert (name in meta) is (name in django_meta), name
        assert meta.get(name, "-") == django_meta.get(name, "-"), name
        if name in django_meta:
            assert meta[name] == django_meta[name], name
        else:
            with pytest.raises(KeyError):
                meta[name]
