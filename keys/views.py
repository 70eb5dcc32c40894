"""Dashboard pages for API keys: list, create (the raw key shown once), edit, revoke, rotate.
The key's detail page, with its usage, is metering's (metering/views.py)."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache

from accounts.actors import Actor
from accounts.tenancy import organization_required
from accounts.views import form_add_service_errors
from billing.selectors import model_catalogue
from infra.durations import parse_duration
from infra.errors import ApplicationError
from keys.forms import KEEP, KeyCreateForm, KeyEditForm, KeyRevokeForm, KeyRotateForm
from keys.selectors import api_key_effective_scopes, api_key_get, api_key_list
from keys.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    grantor_of,
)


def _actor(request) -> Actor:
    return Actor.for_user(request, request.user, request.membership.role)


def _show_once(request, issued, title: str) -> HttpResponse:
    # Rendered in the POST response itself: the raw key is never put in a session, a message
    # or a URL, and the page is not cached.
    response = render(
        request, "keys/created.html", {"issued": issued, "key": issued.api_key, "title": title}
    )
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@organization_required
def key_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status") or None
    try:
        keys = api_key_list(organization=request.organization, status=status)
    except ApplicationError:
        keys, status = api_key_list(organization=request.organization), None
    keys = list(keys)
    for key in keys:  # a scope its creator's role no longer allows is shown as inactive
        key.inactive_scopes = set(key.scopes) - api_key_effective_scopes(key)
    return render(
        request,
        "keys/list.html",
        {"keys": keys, "status": status, "now": timezone.now(), "plan": request.organization.plan},
    )


@never_cache
@organization_required
def key_create(request: HttpRequest) -> HttpResponse:
    form = KeyCreateForm(request.POST or None)
    held = grantor_of(_actor(request), request.organization).held
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        expires_in = data.pop("expires_in")
        try:
            issued = api_key_create(
                organization=request.organization,
                actor=_actor(request),
                expires_at=timezone.now() + parse_duration(expires_in) if expires_in else None,
                **data,
            )
        except ValidationError as error:
            form_add_service_errors(form, error)
        except ApplicationError as error:
            form.add_error(None, error.message)
        else:
            return _show_once(request, issued, "Your new API key")
    return render(request, "keys/create.html", {"form": form, "held": sorted(held)})


@never_cache
@organization_required
def key_revoke(request: HttpRequest, ident: str) -> HttpResponse:
    try:
        key = api_key_get(organization=request.organization, ident=ident)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:keys")
    form = KeyRevokeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            api_key_revoke(api_key=key, actor=_actor(request), reason=form.cleaned_data["reason"])
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Key “{key.name}” ({key.hint}) is revoked.")
        return redirect("dashboard:keys")
    return render(request, "keys/revoke.html", {"key": key, "form": form})


@never_cache
@organization_required
def key_rotate(request: HttpRequest, ident: str) -> HttpResponse:
    try:
        key = api_key_get(organization=request.organization, ident=ident)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:keys")
    form = KeyRotateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = api_key_rotate(
                api_key=key, actor=_actor(request), grace=parse_duration(form.cleaned_data["grace"])
            )
        except ApplicationError as error:
            messages.error(request, error.message)
            return redirect("dashboard:keys")
        return _show_once(request, issued, "Your rotated API key")
    return render(request, "keys/rotate.html", {"key": key, "form": form})


@never_cache
@organization_required
def key_edit(request: HttpRequest, ident: str) -> HttpResponse:
    """Name, scopes, models, limits and expiry, through api_key_update: the same rules as
    PATCH /api/keys/{id} (nobody gives a key more than they hold)."""
    try:
        key = api_key_get(organization=request.organization, ident=ident)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:keys")
    actor = _actor(request)
    held = grantor_of(actor, request.organization).held
    models = sorted(set(model_catalogue()) | set(key.allowed_models or ()))
    initial = {
        "name": key.name,
        "scopes": key.scopes,
        "models": key.allowed_models or [],
        **{field: getattr(key, field) for field in key.LIMIT_FIELDS},
    }
    form = KeyEditForm(request.POST or None, initial=initial, models=models)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        expires = data.pop("expires")
        data["models"] = data["models"] or None
        if expires != KEEP:
            data["expires_at"] = timezone.now() + parse_duration(expires) if expires else None
        try:
            api_key_update(api_key=key, actor=actor, **data)
        except ValidationError as error:
            form_add_service_errors(form, error)
        except ApplicationError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Key “{key.name}” ({key.hint}) is saved.")
            return redirect("dashboard:key_detail", ident=key.key_id)
    return render(request, "keys/edit.html", {"form": form, "key": key, "held": sorted(held)})
