from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count

from accounts.actors import Actor
from accounts.models import AuditEvent, Invitation, Membership, Organization, User
from accounts.services import (
    organization_delete,
    organization_delete_refusal,
    organization_set_plan,
    organization_set_quota,
)
from infra.admin import ReadOnlyAdminMixin


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user", "organization"]
    fields = ["user", "organization", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = [
        "email",
        "full_name",
        "organizations",
        "is_active",
        "is_staff",
        "date_joined",
        "last_login",
    ]
    list_filter = ["is_active", "is_staff", "is_superuser", "memberships__role"]
    search_fields = ["email", "full_name", "memberships__organization__slug"]
    readonly_fields = ["date_joined", "last_login"]
    inlines = [MembershipInline]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name",)}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "full_name", "password1", "password2")}),
    )

    def get_queryset(self, request):
        # distinct: searching or filtering through memberships joins them a second time, which
        # would multiply a plain count.
        return (
            super()
            .get_queryset(request)
            .annotate(organization_count=Count("memberships", distinct=True))
        )

    @admin.display(description="orgs", ordering="organization_count")
    def organizations(self, obj: User) -> int:
        return obj.organization_count


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "plan", "member_count", "created_at", "deleted_at"]
    list_filter = ["plan", "created_at", "deleted_at"]
    list_select_related = ["plan"]
    search_fields = ["name", "slug", "memberships__user__email"]
    readonly_fields = ["created_at", "deleted_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        # distinct: see UserAdmin.get_queryset.
        return (
            super().get_queryset(request).annotate(member_total=Count("memberships", distinct=True))
        )

    @admin.display(description="members", ordering="member_total")
    def member_count(self, obj: Organization) -> int:
        return obj.member_total

    def save_model(self, request, obj, form, change):
        plan_changed = change and "plan" in form.changed_data
        plan = obj.plan
        if plan_changed:
            # The plan moves through the service that owns plan changes, so the organization's
            # keys re-read their limits on the next request and the audit log records from → to
            # (saved here first, the row would already hold the new plan: nothing to record).
            obj.plan_id = form.initial["plan"]
        # Custom quotas likewise, through theirs (audited quota.changed).
        quotas = {
            field: getattr(obj, field)
            for field in Organization.QUOTA_FIELDS
            if change and field in form.changed_data
        }
        for field in quotas:
            setattr(obj, field, form.initial[field])
        super().save_model(request, obj, form, change)
        if plan_changed:
            organization_set_plan(organization=obj, plan=plan, actor=Actor.for_operator(request))
        if quotas:
            organization_set_quota(
                organization=obj, actor=Actor.for_operator(request), quotas=quotas
            )

    # Deleting goes through organization_delete: the confirmation page lists why an organization
    # cannot go (as Django lists protected objects) and offers no "Yes" button then.
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        refusals = [organization_delete_refusal(organization=obj) for obj in objs]
        reasons = [refusal.message for refusal in refusals if refusal]
        if reasons:
            # Django shows missing permissions before protected objects; the reason comes first.
            return deleted, counts, set(), [*reasons, *protected]
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        organization_delete(organization=obj, actor=Actor.for_operator(request))

    def delete_queryset(self, request, queryset):
        for organization in queryset:
            organization_delete(organization=organization, actor=Actor.for_operator(request))


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization__plan"]
    list_select_related = ["user", "organization"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user", "organization"]
    readonly_fields = ["created_at"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Operators see and withdraw invitations; they are made on the dashboard (an email with a
    secret only the invitee receives), so there is no add form."""

    list_display = ["email", "organization", "role", "sent_at", "expires_at", "accepted_at"]
    list_filter = ["role", "accepted_at", "revoked_at"]
    list_select_related = ["organization"]
    search_fields = ["email", "organization__slug", "organization__name"]
    readonly_fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "sent_at",
        "send_count",
        "expires_at",
        "accepted_at",
        "accepted_by",
    ]
    exclude = ["token_hash"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Append-only: operators can read and search the log, never add, edit or delete."""

    list_display = [
        "created_at",
        "action",
        "actor_label",
        "organization_slug",
        "target_label",
        "target_id",
        "ip",
    ]
    list_filter = ["action", "created_at"]
    search_fields = [
        "action",
        "actor_label",
        "actor_key_id",
        "target_id",
        "target_label",
        "organization_slug",
        "ip",
    ]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]
