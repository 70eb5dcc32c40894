import os

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.forms.models import BaseInlineFormSet

from aibaas.gateway.models import AIModel, Upstream, check_upstream_set
from aibaas.gateway.services import model_connection_test, model_registry_invalidate
from billing.models import ModelPrice
from infra.admin import LogEachDeletionMixin


class UpstreamFormSet(BaseInlineFormSet):
    """Checks the set of upstreams against the model being saved (check_upstream_set)."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        enabled_flags = [
            bool(form.cleaned_data.get("enabled"))
            for form in self.forms
            if form.cleaned_data and not self._should_delete_form(form)
        ]
        try:
            check_upstream_set(model=self.instance, enabled_flags=enabled_flags)
        except ValidationError as error:
            raise ValidationError(error.messages) from None


class UpstreamInline(admin.TabularInline):
    model = Upstream
    formset = UpstreamFormSet
    extra = 0
    fields = [
        "base_url",
        "upstream_model",
        "api_key_env",
        "api_key_present",
        "weight",
        "timeout_seconds",
        "connect_timeout_seconds",
        "enabled",
    ]
    readonly_fields = ["api_key_present"]

    @admin.display(description="key in env?", boolean=True)
    def api_key_present(self, obj: Upstream) -> bool | None:
        # Whether this process can see the variable; never its value.
        if obj is None or not obj.pk or not obj.api_key_env:
            return None
        return bool(os.environ.get(obj.api_key_env))


class ModelPriceInline(admin.StackedInline):
    model = ModelPrice
    extra = 0
    max_num = 1
    fields = ["input_per_million", "output_per_million", "cached_input_per_million"]
    verbose_name = "price"
    verbose_name_plural = "price (USD per million tokens)"


@admin.register(AIModel)
class AIModelAdmin(LogEachDeletionMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "kind",
        "provider",
        "enabled",
        "test_mode_allowed",
        "context_window",
        "response_cache_ttl",
        "upstream_count",
        "input_price",
        "output_price",
        "updated_at",
    ]
    list_filter = ["kind", "provider", "enabled", "test_mode_allowed"]
    search_fields = ["name", "description", "upstreams__upstream_model", "upstreams__base_url"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [UpstreamInline, ModelPriceInline]
    actions = ["test_connection"]
    fieldsets = (
        (None, {"fields": ("name", "kind", "provider", "enabled", "description")}),
        (
            "Behaviour",
            {
                "fields": (
                    "context_window",
                    "test_mode_allowed",
                    "response_cache_ttl",
                    "embedding_dimensions",
                )
            },
        ),
        ("Dates", {"fields": ("created_at", "updated_at")}),
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("price")
            .annotate(
                upstream_total=Count("upstreams", distinct=True),
                upstream_enabled=Count("upstreams", filter=Q(upstreams__enabled=True)),
            )
        )

    @admin.display(description="upstreams (enabled)", ordering="upstream_total")
    def upstream_count(self, obj: AIModel) -> str:
        if obj.provider == "demo":
            return "built in"
        return f"{obj.upstream_total} ({obj.upstream_enabled})"

    def _price(self, obj: AIModel) -> ModelPrice | None:
        try:
            return obj.price
        except ModelPrice.DoesNotExist:
            return None

    @admin.display(description="$ / M in")
    def input_price(self, obj: AIModel):
        price = self._price(obj)
        return "-" if price is None else price.input_per_million.normalize()

    @admin.display(description="$ / M out")
    def output_price(self, obj: AIModel):
        price = self._price(obj)
        return "-" if price is None else price.output_per_million.normalize()

    @admin.action(description="Test connection to the selected models' upstreams")
    def test_connection(self, request, queryset):
        """Each upstream's /models and one token of work, reported as one message each."""
        for model in queryset.order_by("name"):
            results = model_connection_test(model=model)
            if not results:
                self.message_user(
                    request, f"{model.name}: no upstream to test (built in).", messages.INFO
                )
            for upstream, steps in results:
                ok = all(step.ok for step in steps)
                lines = "; ".join(str(step) for step in steps)
                self.message_user(
                    request,
                    f"{model.name} → {upstream}: {'OK' if ok else 'FAILED'}: {lines}",
                    messages.SUCCESS if ok else messages.ERROR,
                )

    # Every write path of the admin forgets the per-process registry and price snapshots.
    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        model_registry_invalidate()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        model_registry_invalidate()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        model_registry_invalidate()
