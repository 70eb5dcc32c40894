"""Billing's web endpoints: the Stripe webhook and the dashboard's billing page and actions."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.subscriptions.webhooks import webhook_receive
from infra.errors import ApplicationError


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
