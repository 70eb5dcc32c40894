from django.contrib import admin, messages
from django.utils import timezone

from accounts.actors import Actor
from accounts.admin import OrganizationAdmin
from accounts.models import Organization
from infra.admin import ReadOnlyAdminMixin
from metering.models import QuotaCounter, UsageEvent
from metering.quota import period_for, quota_reset


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Usage is money and is written only by the metering pipeline: operators read it here and
    correct it through services, never by editing rows."""

    list_display = [
        "created_at",
        "request_id",
        "organization",
        "key_id",
        "model",
        "endpoint",
        "status_code",
        "billable",
        "error_code",
        "input_tokens",
        "output_tokens",
        "cost",
        "cached",
        "estimated",
        "latency_ms",
    ]
    list_filter = [
        "organization",
        "billable",
        "error_code",
        "model",
        "status_code",
        "cached",
        "endpoint",
    ]
    search_fields = ["request_id", "key_id", "model"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # COUNT(*) over millions of events on every page is slow


@admin.register(QuotaCounter)
class QuotaCounterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Monthly quota counters, written by metering/quota/ on every admitted request. Operators
    read them here; the only change is the reset action, which goes through the service (audited).
    Rows of past months are history and are never changed."""

    list_display = ["organization", "period", "requests", "tokens", "updated_at"]
    list_filter = ["period", "organization__plan"]
    search_fields = ["organization__slug", "organization__name"]
    list_select_related = ["organization"]
    date_hierarchy = "period"
    actions = ["reset_quota"]

    def has_reset_permission(self, request) -> bool:
        return request.user.has_perm("metering.change_quotacounter")

    @admin.action(description="Reset the monthly quota", permissions=["reset"])
    def reset_quota(self, request, queryset):
        current = period_for(timezone.now())
        rows = list(queryset.select_related("organization"))
        # One row per organization and month: the current month's rows name distinct orgs.
        organizations = [row.organization for row in rows if row.period == current]
        past = len(rows) - len(organizations)
        actor = Actor.for_operator(request)
        for organization in organizations:
            quota_reset(organization, actor=actor, reason=f"reset in admin by {request.user}")
        reset = len(organizations)
        if reset:
            self.message_user(
                request, f"Reset this month's quota of {reset} organization(s).", messages.SUCCESS
            )
        if past:
            self.message_user(
                request,
                f"Skipped {past} counter(s) of past months: they are history and stay as they are.",
                messages.WARNING,
            )


class MeteredOrganizationAdmin(OrganizationAdmin):
    """The Organization admin of accounts, plus the quota reset that metering owns: accounts
    sits below metering and does not import it, so metering extends accounts' admin."""

    actions = [*OrganizationAdmin.actions, "reset_quota"]

    def has_reset_quota_permission(self, request) -> bool:
        return request.user.has_perm("metering.change_quotacounter")

    @admin.action(description="Reset this month's quota usage", permissions=["reset_quota"])
    def reset_quota(self, request, queryset):
        actor = Actor.for_operator(request)
        count = 0
        for organization in queryset:
            quota_reset(organization, actor=actor, reason=f"reset in admin by {request.user}")
            count += 1
        self.message_user(
            request, f"Reset this month's quota of {count} organization(s).", messages.SUCCESS
        )


admin.site.unregister(Organization)
admin.site.register(Organization, MeteredOrganizationAdmin)
