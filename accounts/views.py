from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.forms import OrganizationForm, SignupForm
from accounts.selectors import membership_list, organization_members
from accounts.services import organization_create, user_signup
from accounts.tenancy import organization_required, set_current_organization


def _login_rate(group, request) -> str:
    return settings.RATELIMIT_LOGIN


def _signup_rate(group, request) -> str:
    return settings.RATELIMIT_SIGNUP


def ratelimited(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Shown by django-ratelimit's middleware when an IP exceeds the login/signup limits."""
    response = render(request, "429.html", status=429)
    response["Retry-After"] = "60"
    return response


def form_add_service_errors(form, error: ValidationError) -> None:
    """Show a service's ValidationError on the form, field by field when it names fields."""
    if hasattr(error, "error_dict"):
        for field, errors in error.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error.messages)


@ratelimit(key="ip", rate=_signup_rate, method="POST", block=True)
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


@method_decorator(ratelimit(key="ip", rate=_login_rate, method="POST", block=True), name="post")
class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password_change_done")


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")


# --- Dashboard -------------------------------------------------------------------------------


@organization_required
def overview(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    return render(
        request,
        "dashboard/overview.html",
        {
            "plan": organization.plan,
            "members": organization_members(organization=organization),
        },
    )


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
