from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from accounts.actors import Actor
from keys.models import ApiKey, ApiKeyStatus
from keys.selectors import api_key_effective_scopes, with_creator_role
from keys.services import api_key_clean_changes, api_key_revoke

OVERRIDE_HELP = (
    "Lowers the plan's limit for this key; at most the plan's value (the key gets the lower of "
    "the two, so a later plan downgrade caps it too). Empty = the plan's limit."
)


def _service_field(form_field: str) -> str:
    return "models" if form_field == "allowed_models" else form_field


class ApiKeyAdminForm(forms.ModelForm):
    """Validates an edit with the key service's own rules, so a bad value is a form error."""

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "allowed_models", "expires_at", *ApiKey.LIMIT_FIELDS]
        help_texts = dict.fromkeys(ApiKey.LIMIT_FIELDS, OVERRIDE_HELP)

    def clean(self):
        cleaned = super().clean()
        changes = {
            _service_field(field): cleaned[field] for field in self.changed_data if field in cleaned
        }
        try:
            api_key_clean_changes(plan=self.instance.organization.plan, **changes)
        except ValidationError as error:
            form_fields = {_service_field(field): field for field in self.fields}
            for field, errors in error.message_dict.items():
                self.add_error(form_fields.get(field), errors)
        return cleaned


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return ApiKeyStatus.choices

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == ApiKeyStatus.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == ApiKeyStatus.EXPIRED:
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == ApiKeyStatus.ACTIVE:
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued by the dashboard, the API or `create_key` (the raw key is shown once
    there), so the admin cannot add keys, and never shows the hash. Keys are revoked, never
    deleted: a deleted key would leave its audit trail and usage pointing at nothing, and its
    cached verification alive until the cache forgot it."""

    list_display = [
        "name",
        "hint",
        "organization",
        "status",
        "scope_list",
        "test_mode",
        "created_at",
        "last_used_at",
        "expires_at",
    ]
    list_filter = [StatusFilter, "test_mode", "organization__plan", "organization"]
    list_select_related = ["organization"]
    search_fields = [
        "name",
        "key_id",
        "organization__slug",
        "organization__name",
        "created_by__email",
    ]
    date_hierarchy = "created_at"
    actions = ["revoke_selected"]
    form = ApiKeyAdminForm
    exclude = ["key_hash"]
    readonly_fields = [
        "organization",
        "key_id",
        "hint",
        "test_mode",
        "created_by",
        "created_at",
        "revoked_at",
        "revoked_reason",
        "rotated_from",
        "last_used_at",
        "last_used_ip",
        "status",
        "effective_scope_list",
        "operator_issued",
    ]
    fieldsets = (
        (None, {"fields": ("organization", "name", "key_id", "hint", "status", "test_mode")}),
        (
            "Authorization",
            {
                "fields": (
                    "scopes",
                    "effective_scope_list",
                    "operator_issued",
                    "allowed_models",
                    "expires_at",
                )
            },
        ),
        (
            "Limit overrides (only lower the plan's; empty = plan's)",
            {"fields": ApiKey.LIMIT_FIELDS},
        ),
        (
            "History",
            {
                "fields": (
                    "created_by",
                    "created_at",
                    "rotated_from",
                    "revoked_at",
                    "revoked_reason",
                    "last_used_at",
                    "last_used_ip",
                )
            },
        ),
    )

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Only a revoked key, and only as part of deleting its organization (which refuses one
        # with live keys): the key pages never delete (no action, no delete page or link).
        return (
            obj is not None
            and obj.revoked_at is not None
            and super().has_delete_permission(request, obj)
        )

    def delete_view(self, request, object_id, extra_context=None):
        raise PermissionDenied("Keys are revoked, never deleted.")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_queryset(self, request):
        return with_creator_role(super().get_queryset(request))

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        """The key's scopes, those its creator's role no longer allows marked inactive."""
        effective = api_key_effective_scopes(obj)
        return ", ".join(s if s in effective else f"{s} (inactive)" for s in obj.scopes)

    @admin.display(description="effective scopes")
    def effective_scope_list(self, obj: ApiKey) -> str:
        """What the key may do now: its scopes limited by its creator's current role."""
        return ", ".join(sorted(api_key_effective_scopes(obj))) or "none"

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        actor = Actor.for_operator(request)
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=key, actor=actor, reason=f"revoked in admin by {request.user}")
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        # Edits go through the service so they are validated, audited and invalidate caches.
        from keys.services import api_key_update

        changes = {_service_field(field): form.cleaned_data[field] for field in form.changed_data}
        original = ApiKey.objects.get(pk=obj.pk)
        api_key_update(api_key=original, actor=Actor.for_operator(request), **changes)
