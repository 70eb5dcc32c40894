from django.contrib import admin
from django.db.models import Count

from billing.models import ModelPrice, Plan
from infra.admin import LogEachDeletionMixin


@admin.register(Plan)
class PlanAdmin(LogEachDeletionMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "monthly_price",
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
        "burst_percent",
        "monthly_request_quota",
        "monthly_token_quota",
        "max_keys",
        "organization_count",
        "is_public",
    ]
    list_editable = ["is_public"]
    list_filter = ["is_public"]
    search_fields = ["name", "slug"]
    readonly_fields = [
        "created_at",
        "updated_at",
        "stripe_product_id",
        "stripe_price_id",
        "stripe_metered_price_id",
        "stripe_meter_id",
    ]
    fieldsets = (
        (None, {"fields": ("name", "slug", "monthly_price", "is_public", "sort_order")}),
        (
            "Rate limits (empty = unlimited)",
            {
                "fields": (
                    "requests_per_minute",
                    "requests_per_day",
                    "tokens_per_minute",
                    "tokens_per_day",
                )
            },
        ),
        (
            "Bursts (off at 0 %)",
            {"fields": ("burst_percent", "burst_seconds")},
        ),
        (
            "Monthly quotas and keys (empty = unlimited)",
            {
                "fields": (
                    "monthly_request_quota",
                    "monthly_token_quota",
                    "max_keys",
                )
            },
        ),
        (
            "Stripe (ids set by manage.py stripe_sync)",
            {
                "fields": (
                    "metered_price_per_million_tokens",
                    "stripe_product_id",
                    "stripe_price_id",
                    "stripe_metered_price_id",
                    "stripe_meter_id",
                )
            },
        ),
        ("Dates", {"fields": ("created_at", "updated_at")}),
    )

    def save_model(self, request, obj, form, change):
        # The keys of its organizations re-read their limits: keys/signals.py.
        super().save_model(request, obj, form, change)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(org_total=Count("organizations"))

    @admin.display(description="orgs", ordering="org_total")
    def organization_count(self, obj: Plan) -> int:
        return obj.org_total

    def has_delete_permission(self, request, obj=None) -> bool:
        # Organizations point at plans with PROTECT; a plan in use cannot go.
        return super().has_delete_permission(request, obj) and (
            obj is None or not obj.organizations.exists()
        )


@admin.register(ModelPrice)
class ModelPriceAdmin(LogEachDeletionMixin, admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "updated_at",
    ]
    list_select_related = ["model"]
    search_fields = ["model__name"]
    list_filter = ["model__kind", "model__provider"]
    autocomplete_fields = ["model"]
    readonly_fields = ["created_at", "updated_at"]
