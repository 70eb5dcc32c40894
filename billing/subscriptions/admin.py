"""Operators' view of Stripe billing: each organization's customer, subscription, period and last
webhook (with a resync from Stripe), and every webhook event received."""

from django.contrib import admin, messages

from accounts.actors import Actor
from billing.models import BillingAccount, MeterReport, StripeEvent
from billing.subscriptions import stripe_client
from billing.subscriptions.services import subscription_cancel_now
from billing.subscriptions.state import billing_account_resync
from billing.subscriptions.tasks import send_meter_report
from billing.subscriptions.usage import meter_reports_retry
from infra.admin import ActionsOnlyAdminMixin, ReadOnlyAdminMixin
from infra.errors import ApplicationError


@admin.register(BillingAccount)
class BillingAccountAdmin(ActionsOnlyAdminMixin, admin.ModelAdmin):
    """Stripe's state, written by webhooks: an edit here would be overwritten by the next one."""

    list_display = [
        "organization",
        "stripe_customer_id",
        "subscription_status",
        "subscribed_plan",
        "current_period_end",
        "cancel_at_period_end",
        "past_due_since",
        "last_event_at",
        "cancel_owed_since",
        "cancel_last_error",
    ]
    list_filter = ["subscription_status", "cancel_at_period_end", "subscribed_plan"]
    search_fields = ["organization__slug", "organization__name", "stripe_customer_id"]
    list_select_related = ["organization", "subscribed_plan"]
    actions = ["resync", "cancel_now"]

    @admin.action(description="Resync from Stripe")
    def resync(self, request, queryset):
        for account in queryset.select_related("organization"):
            try:
                outcome = billing_account_resync(account=account)
            except stripe_client.StripeError as error:
                outcome = f"Stripe refused: {error.user_message or error}"
                self.message_user(request, f"{account.organization}: {outcome}", messages.ERROR)
                continue
            self.message_user(request, f"{account.organization}: {outcome}")

    @admin.action(description="Cancel the subscription now (not at period end)")
    def cancel_now(self, request, queryset):
        actor = Actor.for_operator(request)
        for account in queryset.select_related("organization"):
            try:
                outcome = subscription_cancel_now(account=account, actor=actor)
            except (ApplicationError, stripe_client.StripeError) as error:
                self.message_user(request, f"{account.organization}: {error}", messages.ERROR)
                continue
            self.message_user(request, f"{account.organization}: {outcome}")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "stripe_id",
        "type",
        "organization",
        "stripe_created",
        "processed_at",
        "outcome",
    ]
    list_filter = ["type"]
    search_fields = ["stripe_id", "organization__slug"]
    list_select_related = ["organization"]
    date_hierarchy = "received_at"


@admin.register(MeterReport)
class MeterReportAdmin(ActionsOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "identifier",
        "organization",
        "window_start",
        "tokens",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
    ]
    list_filter = ["status"]
    search_fields = ["identifier", "organization__slug"]
    list_select_related = ["organization"]
    actions = ["retry_now"]

    @admin.action(description="Retry the failed reports now")
    def retry_now(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        count = meter_reports_retry(report_ids=ids)
        for report_id in ids:
            send_meter_report.delay(report_id)
        self.message_user(request, f"{count} failed report(s) sent again.")
