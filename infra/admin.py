"""Admin pieces shared by the apps."""


class ReadOnlyAdminMixin:
    """For append-only records (audit log, usage events): operators read and search, never add,
    edit or delete rows in the admin."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ActionsOnlyAdminMixin:
    """For rows another system writes (Stripe's state, the meter outbox): operators read them
    and run the admin's actions, never add, edit a field or delete in the admin."""

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class LogEachDeletionMixin:
    """Django logs a bulk deletion ("Delete selected") with one bulk_create, which sends no
    post_save signal; saved one by one, each deleted object reaches the listeners of admin
    edits (the audit log's catalogue changes, accounts/signals.py)."""

    def log_deletions(self, request, queryset):
        entries = []
        for obj in queryset:  # a loop, not a comprehension: super() needs the method's frame
            entries += super().log_deletions(request, [obj])
        return entries
