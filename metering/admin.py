from django.contrib import admin

from aibaas.admin import ReadOnlyAdminMixin
from metering.models import UsageEvent


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
        "input_tokens",
        "output_tokens",
        "cost",
        "cached",
        "estimated",
        "latency_ms",
    ]
    list_filter = ["organization", "model", "status_code", "cached", "endpoint"]
    search_fields = ["request_id", "key_id"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # COUNT(*) over millions of events on every page is slow
