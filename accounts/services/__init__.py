"""Writes of accounts: users and signup, organizations, the team and its invitations."""

from accounts.services.invitations import (
    Link,
    invitation_accept,
    invitation_create,
    invitation_resend,
    invitation_revoke,
    invitation_signup,
)
from accounts.services.organizations import (
    DELETE_CONFIRMATION_MISMATCH,
    ORGANIZATION_HAS_KEYS,
    ORGANIZATION_HAS_KEYS_MESSAGE,
    ORGANIZATION_HAS_USAGE,
    ORGANIZATION_HAS_USAGE_MESSAGE,
    SLUG_TAKEN,
    organization_create,
    organization_delete,
    organization_delete_by_owner,
    organization_delete_refusal,
    organization_rename,
    organization_set_plan,
    user_signup,
)
from accounts.services.quotas import QUOTA_NEGATIVE, organization_set_quota
from accounts.services.team import (
    membership_add,
    membership_leave,
    membership_remove,
    membership_role_change,
    ownership_transfer,
)
from accounts.services.users import EMAIL_TAKEN, user_create, user_tokens_revoke

__all__ = [
    "DELETE_CONFIRMATION_MISMATCH",
    "EMAIL_TAKEN",
    "ORGANIZATION_HAS_KEYS",
    "ORGANIZATION_HAS_KEYS_MESSAGE",
    "ORGANIZATION_HAS_USAGE",
    "ORGANIZATION_HAS_USAGE_MESSAGE",
    "QUOTA_NEGATIVE",
    "SLUG_TAKEN",
    "Link",
    "invitation_accept",
    "invitation_create",
    "invitation_resend",
    "invitation_revoke",
    "invitation_signup",
    "membership_add",
    "membership_leave",
    "membership_remove",
    "membership_role_change",
    "organization_create",
    "organization_delete",
    "organization_delete_by_owner",
    "organization_delete_refusal",
    "organization_rename",
    "organization_set_plan",
    "organization_set_quota",
    "ownership_transfer",
    "user_create",
    "user_signup",
    "user_tokens_revoke",
]
