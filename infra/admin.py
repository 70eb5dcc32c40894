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
