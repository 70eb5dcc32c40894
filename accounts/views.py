from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.actors import Actor
from accounts.audit import (
    READERS_ONLY,
    action_label,
    audit_actors,
    audit_csv_lines,
    audit_list,
    target_text,
)
from accounts.forms import AuditFilterForm, OrganizationForm, PasswordResetForm, SignupForm
from accounts.models import AuditAction
from accounts.selectors import membership_list
from accounts.services import organization_create, user_signup, user_tokens_revoke
from accounts.tenancy import organization_required, set_current_organization
from infra.http import client_ip, ratelimit_retry_after, user_agent

# The limit groups are the views' URL names, so the 429 page can tell which limit was hit.
LOGIN_RATELIMIT_GROUP = "accounts:login"
SIGNUP_RATELIMIT_GROUP = "accounts:signup"
DEFAULT_RETRY_AFTER_SECONDS = 60


def _login_rate(group, request) -> str:
    return settings.RATELIMIT_LOGIN


def _signup_rate(group, request) -> str:
    return settings.RATELIMIT_SIGNUP


def _invite_rate(group, request) -> str:
    return settings.RATELIMIT_INVITE


INVITE_RATELIMIT_GROUP = "dashboard:team_invite"
# View name → (its limit's group, rate and key).
_RATE_BY_VIEW = {
    LOGIN_RATELIMIT_GROUP: (LOGIN_RATELIMIT_GROUP, _login_rate, "ip"),
    SIGNUP_RATELIMIT_GROUP: (SIGNUP_RATELIMIT_GROUP, _signup_rate, "ip"),
    "dashboard:team_invite": (INVITE_RATELIMIT_GROUP, _invite_rate, "user_or_ip"),
    "dashboard:invitation_resend": (INVITE_RATELIMIT_GROUP, _invite_rate, "user_or_ip"),
}


def _retry_after(request: HttpRequest) -> int:
    """Seconds until the client's current window of the limit it hit ends, at most its period.

    The rates are configurable ("5/h" is valid), so a fixed minute would send clients back while
    they are still blocked.
    """
    match = request.resolver_match
    limit = _RATE_BY_VIEW.get(match.view_name if match else "")
    if limit is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    group, rate, key = limit
    return ratelimit_retry_after(request, group=group, rate=rate, key=key)


def ratelimited(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Shown by django-ratelimit's middleware when a client exceeds the login/signup limits
    (per address) or the invitation limit (per user)."""
    retry_after = _retry_after(request)
    response = render(request, "429.html", {"retry_after": retry_after}, status=429)
    response["Retry-After"] = str(retry_after)
    return response


def form_add_service_errors(form, error: ValidationError) -> None:
    """Show a service's ValidationError on the form, field by field when it names fields."""
    if hasattr(error, "error_dict"):
        for field, errors in error.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error.messages)


@ratelimit(group=SIGNUP_RATELIMIT_GROUP, key="ip", rate=_signup_rate, method="POST", block=True)
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard:overview")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            actor = Actor(ip=client_ip(request), user_agent=user_agent(request))
            membership = user_signup(**form.cleaned_data, actor=actor)
        except ValidationError as error:
            form_add_service_errors(form, error)
        else:
            login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            set_current_organization(request, membership)
            messages.success(request, f"Welcome! {membership.organization.name} is ready.")
            return redirect("dashboard:overview")
    return render(request, "accounts/signup.html", {"form": form})


@method_decorator(
    ratelimit(group=LOGIN_RATELIMIT_GROUP, key="ip", rate=_login_rate, method="POST", block=True),
    name="post",
)
class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    """Ends the session and, like `POST /api/auth/logout`, every JWT of the user."""

    def post(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            user_tokens_revoke(user=request.user)
        return super().post(request, *args, **kwargs)


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password_change_done")


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    form_class = PasswordResetForm
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")


# --- Dashboard -------------------------------------------------------------------------------


@require_POST
@organization_required
def organization_switch(request: HttpRequest) -> HttpResponse:
    target = request.POST.get("organization", "")
    membership = (
        membership_list(user=request.user).filter(organization_id=target).first()
        if target.isdigit()
        else None
    )
    if membership is None:
        messages.error(request, "You are not a member of that organization.")
    else:
        set_current_organization(request, membership)
        messages.success(request, f"Switched to {membership.organization.name}.")
    return redirect("dashboard:overview")


@login_required
def organization_new(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization = organization_create(
                name=form.cleaned_data["name"],
                owner=request.user,
                actor=Actor.for_user(request, request.user, None),
            )
        except ValidationError as error:
            form_add_service_errors(form, error)
        else:
            membership = membership_list(user=request.user).get(organization=organization)
            set_current_organization(request, membership)
            messages.success(request, f"{organization.name} created.")
            return redirect("dashboard:overview")
    return render(request, "dashboard/organization_new.html", {"form": form})


def _audit_events(request: HttpRequest):
    """The filtered events of the request's organization (None when the filters are invalid),
    and the filter form."""
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return None, form
    return audit_list(organization=request.organization, **form.filters()), form


def _admins_only(view):
    """The audit log's pages are for owners and admins only (they show IPs and emails)."""

    @wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        if not request.membership.is_admin:
            messages.error(request, READERS_ONLY)
            return redirect("dashboard:overview")
        return view(request)

    return organization_required(guarded)


@_admins_only
def audit(request: HttpRequest) -> HttpResponse:
    """The organization's audit log. Invalid filters show as form errors, with no rows (never
    the unfiltered log instead)."""
    events, form = _audit_events(request)
    page = Paginator(events if events is not None else [], 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "dashboard/audit.html",
        {
            "page": page,
            "rows": [(event, action_label(event.action), target_text(event)) for event in page],
            "form": form,
            "query": query.urlencode(),
            "action_choices": AuditAction.choices,
            "actor_choices": audit_actors(organization=request.organization),
        },
    )


@_admins_only
def audit_csv(request: HttpRequest) -> HttpResponse:
    """The filtered audit log as CSV, streamed (any length, constant memory); invalid filters
    are a 400 that says which and why."""
    events, form = _audit_events(request)
    if events is None:
        _, message = form.first_error()
        return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
    response = StreamingHttpResponse(
        audit_csv_lines(events.iterator(chunk_size=500)), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    filename = f"audit-{request.organization.slug}-{stamp}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
