"""Billing's web endpoints: the Stripe webhook, the dashboard's billing page and its actions.

The actions are POST-only, CSRF-protected and organization-scoped; the services decide who may
use them (owners and admins) and the page shows their refusal as a message."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.actors import Actor
from accounts.tenancy import organization_required
from billing.selectors import plan_get
from billing.subscriptions import services
from billing.subscriptions.selectors import billing_overview, stripe_details
from billing.subscriptions.webhooks import webhook_receive
from infra.errors import ApplicationError

CHECKOUT_CANCELLED = "Checkout cancelled: your plan has not changed."
CHECKOUT_RETURNED = (
    "Thank you! Stripe is confirming your payment; the new plan applies as soon as it does."
)
CANCEL_SCHEDULED = "Your subscription ends at the end of the paid period; then you are on Free."
CANCEL_WITHDRAWN = "Your subscription continues."


@csrf_exempt  # Stripe signs the body; there is no session and no CSRF token
@require_POST
def webhook(request: HttpRequest) -> JsonResponse:
    try:
        event, processed = webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except ApplicationError as error:
        return JsonResponse(error.as_dict(), status=error.status)
    return JsonResponse({"received": event.stripe_id, "duplicate": not processed})


def _actor(request) -> Actor:
    return Actor.for_user(request, request.user, request.membership.role)


def _page(request) -> str:
    return request.build_absolute_uri(reverse("dashboard:billing"))


@organization_required
def billing_page(request: HttpRequest) -> HttpResponse:
    # The return from Checkout is only a hint: the plan changes when the webhook confirms it.
    returned = request.GET.get("checkout")
    if returned == "success":
        messages.info(request, CHECKOUT_RETURNED)
        return redirect("dashboard:billing")
    if returned == "cancelled":
        services.checkout_abandon(organization=request.organization)
        messages.info(request, CHECKOUT_CANCELLED)
        return redirect("dashboard:billing")
    overview = billing_overview(organization=request.organization)
    details = stripe_details(account=overview.account)
    return render(request, "billing/billing.html", {"billing": overview, "stripe": details})


def _run(request, action) -> HttpResponse:
    try:
        return action()
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:billing")


@require_POST
@organization_required
def checkout(request: HttpRequest, plan: str) -> HttpResponse:
    def start():
        url = services.checkout_session_start(
            organization=request.organization,
            plan=plan_get(slug=plan),
            actor=_actor(request),
            success_url=f"{_page(request)}?checkout=success",
            cancel_url=f"{_page(request)}?checkout=cancelled",
        )
        return redirect(url)

    return _run(request, start)


@require_POST
@organization_required
def portal(request: HttpRequest) -> HttpResponse:
    def start():
        url = services.portal_session_start(
            organization=request.organization, actor=_actor(request), return_url=_page(request)
        )
        return redirect(url)

    return _run(request, start)


@require_POST
@organization_required
def cancel(request: HttpRequest) -> HttpResponse:
    resume = request.POST.get("resume") == "1"

    def change():
        services.subscription_cancel_at_period_end(
            organization=request.organization, actor=_actor(request), cancel=not resume
        )
        messages.success(request, CANCEL_WITHDRAWN if resume else CANCEL_SCHEDULED)
        return redirect("dashboard:billing")

    return _run(request, change)
