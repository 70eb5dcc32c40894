"""The invitation link (public): the page the invitation email links to, where the invitee
accepts (logged in as the invited address) or signs up as it. GET only shows; joining is a
POST."""

from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from accounts.actors import Actor
from accounts.forms import InvitationSignupForm
from accounts.models import User
from accounts.services import invitation_accept, invitation_signup
from accounts.services.invitations import invitation_check_address, invitation_from_token
from accounts.tenancy import set_current_organization
from accounts.views import form_add_service_errors
from infra.errors import ApplicationError
from infra.http import client_ip, user_agent


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the email. GET only shows (mail scanners open links); joining is a POST:
    accept as the logged-in invitee, or sign up as the invited address."""
    try:
        invite = invitation_from_token(token=token)
    except ApplicationError as error:
        return render(
            request, "accounts/invitation.html", {"error": error.message}, status=error.status
        )
    user = request.user if request.user.is_authenticated else None
    context = {
        "invitation": invite,
        "organization": invite.organization,
        "token": token,
        "has_account": User.objects.filter(email__iexact=invite.email).exists(),
        "login_url": f"{reverse('accounts:login')}?next={request.path}",
        "signup_form": InvitationSignupForm(),
    }
    if user is not None:
        try:
            invitation_check_address(invitation=invite, user=user)
        except ApplicationError as error:
            context["other_address"] = error.message
    if request.method != "POST":
        return render(request, "accounts/invitation.html", context)
    membership = _join(request, token, user, context)
    if isinstance(membership, HttpResponse):
        return membership
    set_current_organization(request, membership)
    messages.success(
        request,
        f"Welcome to {membership.organization.name}: you joined as "
        f"{membership.get_role_display().lower()}.",
    )
    return redirect("dashboard:overview")


def _join(request: HttpRequest, token: str, user, context: dict):
    """Accept as the logged-in `user`, or sign up (and log in) as the invited address: the new
    membership, or the page again (400) with what went wrong."""
    if user is not None:
        try:
            return invitation_accept(token=token, actor=Actor.for_user(request, user, None))
        except (ApplicationError, ValidationError) as error:
            text = error.message if isinstance(error, ApplicationError) else error.messages[0]
            messages.error(request, text)
            return render(request, "accounts/invitation.html", context, status=400)
    form = InvitationSignupForm(request.POST)
    context["signup_form"] = form
    if not form.is_valid():
        return render(request, "accounts/invitation.html", context, status=400)
    try:
        membership = invitation_signup(
            token=token,
            actor=Actor(ip=client_ip(request), user_agent=user_agent(request)),
            **form.cleaned_data,
        )
    except ValidationError as error:
        form_add_service_errors(form, error)
        return render(request, "accounts/invitation.html", context, status=400)
    except ApplicationError as error:
        messages.error(request, error.message)
        return render(request, "accounts/invitation.html", context, status=400)
    login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
    return membership
