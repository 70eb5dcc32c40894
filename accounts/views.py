from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.audit import READERS_ONLY, audit_list
from accounts.forms import OrganizationForm, PasswordResetForm, SignupForm
from accounts.models import AuditAction
from accounts.selectors import membership_list, organization_members
from accounts.services import organization_create, user_signup, user_tokens_revoke
from accounts.tenancy import organization_required, set_current_organization
from infra.http import ratelimit_retry_after

# The limit groups are the views' URL names, so the 429 page can tell which limit was hit.
LOGIN_RATELIMIT_GROUP = "accounts:login"
SIGNUP_RATELIMIT_GROUP = "accounts:signup"
DEFAULT_RETRY_AFTER_SECONDS = 60


def _login_rate(group, request) -> str:
    return settings.RATELIMIT_LOGIN


def _signup_rate(group, request) -> str:
    return settings.RATELIMIT_SIGNUP


_RATE_BY_GROUP = {LOGIN_RATELIMIT_GROUP: _login_rate, SIGNUP_RATELIMIT_GROUP: _signup_rate}


def _retry_after(request: HttpRequest) -> int:
    """Seconds until the client's current window of the limit it hit ends, at most its period.

    The rates are configurable ("5/h" is valid), so a fixed minute would send clients back while
    they are still blocked.
    """
    match = request.resolver_match
    rate = _RATE_BY_GROUP.get(match.view_name if match else "")
    if rate is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    return ratelimit_retry_after(request, group=match.view_name, rate=rate)


def ratelimited(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Shown by django-ratelimit's middleware when an IP exceeds the login/signup limits."""
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
            membership = user_signup(**form.cleaned_data)
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


@organization_required
def team(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/team.html",
        {"members": organization_members(organization=request.organization)},
    )


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
            organization = organization_create(name=form.cleaned_data["name"], owner=request.user)
        except ValidationError as error:
            form_add_service_errors(form, error)
        else:
            membership = membership_list(user=request.user).get(organization=organization)
            set_current_organization(request, membership)
            messages.success(request, f"{organization.name} created.")
            return redirect("dashboard:overview")
    return render(request, "dashboard/organization_new.html", {"form": form})


@organization_required
def audit(request: HttpRequest) -> HttpResponse:
    """The organization's audit log: owners and admins only (it shows IPs and emails)."""
    if not request.membership.is_admin:
        messages.error(request, READERS_ONLY)
        return redirect("dashboard:overview")
    action = request.GET.get("action", "").strip()[:64] or None
    events = audit_list(organization=request.organization, action=action)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/audit.html",
        {"page": page, "action": action or "", "action_choices": AuditAction.choices},
    )
