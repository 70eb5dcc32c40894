"""Django's auth signals feed the audit log; the recording itself is the audit service."""

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_save
from django.dispatch import Signal, receiver

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, User
from accounts.selectors import membership_list
from infra.http import client_ip, user_agent

# Sent inside the transaction that closes (soft-deletes) an organization, before its members go:
# keys (a layer above) revokes the organization's keys. Arguments: organization, actor.
organization_closing = Signal()


@receiver(user_logged_in, dispatch_uid="audit-login-succeeded")
def audit_login_succeeded(sender, request, user, **kwargs):
    if request is None:
        return
    actor = Actor.for_user(request, user, None)
    memberships = list(membership_list(user=user)) or [None]
    for membership in memberships:  # every organization of the user sees its members' logins
        audit_record(
            action=AuditAction.LOGIN_SUCCEEDED,
            actor=actor,
            organization=membership.organization if membership else None,
            target_type="user",
            target_id=str(user.pk),
        )


@receiver(user_login_failed, dispatch_uid="audit-login-failed")
def audit_login_failed(sender, credentials, request=None, **kwargs):
    # `credentials` is already stripped of the password by Django.
    attempted = str(credentials.get("username") or credentials.get("email") or "")[:254]
    user = User.objects.filter(email__iexact=attempted).first() if attempted else None
    actor = Actor(
        ip=client_ip(request) if request is not None else None,
        user_agent=user_agent(request) if request is not None else "",
        system="anonymous",
    )
    organizations = [m.organization for m in membership_list(user=user)] if user else [None]
    for organization in organizations:
        audit_record(
            action=AuditAction.LOGIN_FAILED,
            actor=actor,
            organization=organization,
            target_type="user",
            target_id=str(user.pk) if user else "",
            metadata={"email": attempted},
        )


# What operators edit in the admin that changes every customer's money or access: plans, models
# and their upstreams, prices. Django's admin logs each edit (LogEntry) with the operator; the
# audit log copies it, as the one place that answers "who changed the price".
CATALOGUE_MODELS = {
    ("billing", "plan"),
    ("billing", "modelprice"),
    ("gateway", "aimodel"),
    ("gateway", "upstream"),
}
_FLAGS = {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}


@receiver(post_save, sender=LogEntry, dispatch_uid="audit-catalogue-edits")
def audit_catalogue_edit(sender, instance: LogEntry, created=False, **kwargs):
    content_type = instance.content_type
    if not created or content_type is None:
        return
    if (content_type.app_label, content_type.model) not in CATALOGUE_MODELS:
        return
    audit_record(
        action=AuditAction.CATALOGUE_CHANGED,
        actor=Actor(user=instance.user, system="admin"),
        target_type=content_type.model,
        target_id=instance.object_id or "",
        target_label=instance.object_repr,
        metadata={
            "what": str(content_type.name),
            "change": _FLAGS.get(instance.action_flag, str(instance.action_flag)),
            "fields": instance.get_change_message(),
        },
    )
