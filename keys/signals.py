"""A key's effective scopes follow its creator's membership and account (keys/scopes.py), so
every change of a membership or of an account, whichever path makes it (accounts' services,
the admin's inline forms, the cascade of a deleted user or organization), drops that person's
keys from every cache: a demotion or deactivation applies on their next request. Receivers,
because those paths do not all go through a service; the invalidation is the keys service's."""

from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from accounts.models import Membership, Organization, User
from accounts.signals import organization_closing
from billing.models import Plan


@receiver(post_save, sender=Membership, dispatch_uid="keys-membership-saved")
@receiver(pre_delete, sender=Membership, dispatch_uid="keys-membership-deleted")
def membership_changed(sender, instance: Membership, **kwargs) -> None:
    # pre_delete: a deleted user's keys lose their creator (SET_NULL) later in the same delete.
    from keys.services import api_keys_invalidate

    api_keys_invalidate(organization_id=instance.organization_id, created_by_id=instance.user_id)


@receiver(post_save, sender=User, dispatch_uid="keys-user-saved")
def user_changed(sender, instance: User, created=False, update_fields=None, **kwargs) -> None:
    # Deactivating an account takes its keys' power away; a login (last_login) changes nothing.
    if created or (update_fields is not None and "is_active" not in update_fields):
        return
    from keys.services import api_keys_invalidate

    api_keys_invalidate(created_by_id=instance.pk)


@receiver(post_save, sender=Organization, dispatch_uid="keys-organization-saved")
def organization_changed(sender, instance: Organization, created=False, update_fields=None, **kw):
    # A plan change (service, admin, Stripe) or custom quota (operators) gives the
    # organization's keys their new limits.
    watched = {"plan", *Organization.QUOTA_FIELDS}
    if created or (update_fields is not None and not watched & set(update_fields)):
        return
    from keys.services import api_keys_invalidate

    api_keys_invalidate(organization=instance)


@receiver(post_save, sender=Plan, dispatch_uid="keys-plan-saved")
def plan_changed(sender, instance: Plan, created=False, **kwargs) -> None:
    # An edited plan (admin, stripe_sync) changes the limits of every key of its organizations.
    if created:
        return
    from keys.services import api_keys_invalidate

    api_keys_invalidate(plan=instance)


@receiver(organization_closing, dispatch_uid="keys-organization-closing")
def organization_closing_revokes_keys(sender, organization, actor, **kwargs) -> None:
    """An organization its owner deleted keeps no working key (each revocation audited)."""
    from keys.models import ApiKey
    from keys.services import api_key_revoke

    for api_key in ApiKey.objects.filter(organization=organization, revoked_at__isnull=True):
        api_key_revoke(api_key=api_key, actor=actor, reason="organization deleted")
