"""Invitations: invite by email, resend, revoke, accept (as a logged-in user or by signing up).

The link carries a random 256-bit secret signed with a timestamp (django.core.signing); the row
keeps only an HMAC of the secret, so neither the database nor a log of it can produce a working
link. A link works once, until `INVITATION_TTL_SECONDS` after it was (re)sent, and only for the
invited address. Resending issues a new secret: the previous link stops working.
"""

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Invitation, Membership, Organization, User
from accounts.services import rules
from accounts.services.team import acting_membership
from accounts.services.users import user_create
from infra.errors import ApplicationError

_SALT = "aibaas.accounts.invitation"

INVITATION_INVALID = "invitation_invalid"
INVITATION_INVALID_MESSAGE = "This invitation link is not valid. Ask for a new invitation."
INVITATION_EXPIRED = "invitation_expired"
INVITATION_EXPIRED_MESSAGE = "This invitation has expired. Ask an admin to resend it."
INVITATION_USED = "invitation_used"
INVITATION_USED_MESSAGE = "This invitation was already accepted."
INVITATION_REVOKED = "invitation_revoked"
INVITATION_REVOKED_MESSAGE = "This invitation was withdrawn."
INVITATION_OTHER_ADDRESS = "invitation_other_address"
INVITATION_OTHER_ADDRESS_MESSAGE = (
    "This invitation is for {email}; you are logged in as {current}. Log out and log in (or "
    "sign up) as {email} to accept it."
)
ALREADY_MEMBER = "You are already a member of {organization}."
ALREADY_A_MEMBER = "{email} is already a member of this organization."
ALREADY_INVITED = "{email} already has an open invitation: resend it from the list below."
INVITATION_NOT_FOUND = "invitation_not_found"


@dataclass(frozen=True)
class Link:
    """Where a link is made: the scheme and host the invitee will open (from the request)."""

    base_url: str

    def accept(self, token: str) -> str:
        return self.base_url.rstrip("/") + reverse("accounts:invitation", args=[token])


def _digest(secret: str) -> str:
    return salted_hmac(_SALT, secret, algorithm="sha256").hexdigest()


def _new_token() -> tuple[str, str]:
    """(the signed token for the link, the digest to store)."""
    secret = secrets.token_urlsafe(32)
    return signing.TimestampSigner(salt=_SALT).sign(secret), _digest(secret)


def _ttl() -> timedelta:
    return timedelta(seconds=settings.INVITATION_TTL_SECONDS)


def _send(invitation: Invitation, token: str, link: Link, inviter: User | None) -> None:
    context = {
        "invitation": invitation,
        "organization": invitation.organization,
        "inviter": inviter,
        "accept_url": link.accept(token),
        "expires_at": invitation.expires_at,
    }
    subject = render_to_string("accounts/email/invitation_subject.txt", context).strip()
    body = render_to_string("accounts/email/invitation.txt", context)
    # Inside the transaction, last: a mail server that refuses leaves no invitation behind.
    send_mail(subject, body, None, [invitation.email], fail_silently=False)


def _audit(action: str, actor: Actor, invitation: Invitation, **metadata) -> None:
    audit_record(
        action=action,
        actor=actor,
        organization=invitation.organization,
        target_type="invitation",
        target_id=str(invitation.pk),
        target_label=invitation.email,
        metadata={"role": invitation.role, **metadata},
    )


@transaction.atomic
def invitation_create(
    *, organization: Organization, actor: Actor, email: str, role: str, link: Link
) -> Invitation:
    """Invite `email` with `role` (not above the actor's own) and mail them the link."""
    acting = acting_membership(actor=actor, organization=organization)
    rules.require_may_grant(acting, role)
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": "Enter a valid email address."}) from None
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ValidationError({"email": ALREADY_A_MEMBER.format(email=email)})
    token, digest = _new_token()
    now = timezone.now()
    invitation = Invitation(
        organization=organization,
        email=email,
        role=role,
        token_hash=digest,
        invited_by=actor.user,
        created_at=now,
        sent_at=now,
        expires_at=now + _ttl(),
    )
    try:
        with transaction.atomic():
            invitation.save()
    except IntegrityError:
        raise ValidationError({"email": ALREADY_INVITED.format(email=email)}) from None
    _audit(AuditAction.MEMBER_INVITED, actor, invitation)
    _send(invitation, token, link, actor.user)
    return invitation


def _open_invitation(organization: Organization, invitation_id: int) -> Invitation:
    invitation = (
        Invitation.objects.select_for_update()
        .filter(
            organization=organization,
            pk=invitation_id,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
        )
        .first()
    )
    if invitation is None:
        raise ApplicationError(INVITATION_NOT_FOUND, "No open invitation with that id.", status=404)
    return invitation


@transaction.atomic
def invitation_resend(
    *, organization: Organization, actor: Actor, invitation_id: int, link: Link
) -> Invitation:
    """Mail a new link (the old one stops working) and restart the expiry."""
    acting = acting_membership(actor=actor, organization=organization)
    invitation = _open_invitation(organization, invitation_id)
    rules.require_may_act_on(acting, invitation.role)
    token, digest = _new_token()
    now = timezone.now()
    invitation.token_hash = digest
    invitation.sent_at = now
    invitation.send_count += 1
    invitation.expires_at = now + _ttl()
    invitation.save(update_fields=["token_hash", "sent_at", "send_count", "expires_at"])
    _audit(AuditAction.INVITATION_RESENT, actor, invitation, sends=invitation.send_count)
    _send(invitation, token, link, actor.user)
    return invitation


@transaction.atomic
def invitation_revoke(*, organization: Organization, actor: Actor, invitation_id: int) -> None:
    acting = acting_membership(actor=actor, organization=organization)
    invitation = _open_invitation(organization, invitation_id)
    rules.require_may_act_on(acting, invitation.role)
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    _audit(AuditAction.INVITATION_REVOKED, actor, invitation)


def invitation_from_token(*, token: str, lock: bool = False) -> Invitation:
    """The open, unexpired invitation a link names, else ApplicationError saying why not."""
    try:
        secret = signing.TimestampSigner(salt=_SALT).unsign(token, max_age=_ttl())
    except signing.SignatureExpired:
        raise ApplicationError(INVITATION_EXPIRED, INVITATION_EXPIRED_MESSAGE, status=410) from None
    except signing.BadSignature:
        raise ApplicationError(INVITATION_INVALID, INVITATION_INVALID_MESSAGE, status=404) from None
    invitations = Invitation.objects.select_related("organization", "invited_by")
    if lock:
        invitations = invitations.select_for_update(of=("self",))
    invitation = invitations.filter(token_hash=_digest(secret)).first()
    if invitation is None:  # resent since (a new secret), or never issued here
        raise ApplicationError(INVITATION_INVALID, INVITATION_INVALID_MESSAGE, status=404)
    if invitation.accepted_at is not None:
        raise ApplicationError(INVITATION_USED, INVITATION_USED_MESSAGE, status=410)
    if invitation.revoked_at is not None or invitation.organization.deleted_at is not None:
        raise ApplicationError(INVITATION_REVOKED, INVITATION_REVOKED_MESSAGE, status=410)
    if invitation.is_expired:
        raise ApplicationError(INVITATION_EXPIRED, INVITATION_EXPIRED_MESSAGE, status=410)
    return invitation


def invitation_check_address(*, invitation: Invitation, user: User) -> None:
    if user.email.lower() != invitation.email.lower():
        message = INVITATION_OTHER_ADDRESS_MESSAGE.format(
            email=invitation.email, current=user.email
        )
        raise ApplicationError(INVITATION_OTHER_ADDRESS, message, status=403)


@transaction.atomic
def invitation_accept(*, token: str, actor: Actor) -> Membership:
    """The logged-in invitee joins with the invited role; the link is used up."""
    invitation = invitation_from_token(token=token, lock=True)
    user = actor.user
    if user is None:
        raise ApplicationError(INVITATION_INVALID, INVITATION_INVALID_MESSAGE, status=403)
    invitation_check_address(invitation=invitation, user=user)
    organization = invitation.organization
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError(ALREADY_MEMBER.format(organization=organization.name))
    membership = Membership.objects.create(
        organization=organization, user=user, role=invitation.role
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        action=AuditAction.MEMBER_JOINED,
        actor=actor,
        organization=organization,
        target_type="user",
        target_id=str(user.pk),
        target_label=user.email,
        metadata={
            "role": invitation.role,
            "invited_by": invitation.invited_by.email if invitation.invited_by else "",
        },
    )
    return membership


@transaction.atomic
def invitation_signup(*, token: str, password: str, full_name: str, actor: Actor) -> Membership:
    """A new account for the invited address (the link proves the mailbox), then accept."""
    invitation = invitation_from_token(token=token, lock=True)
    user = user_create(email=invitation.email, password=password, full_name=full_name)
    audit_record(
        action=AuditAction.USER_SIGNED_UP,
        actor=Actor(user=user, ip=actor.ip, user_agent=actor.user_agent),
        organization=invitation.organization,
        target_type="user",
        target_id=str(user.pk),
        target_label=user.email,
        metadata={"through": "invitation"},
    )
    joined = Actor(user=user, role=invitation.role, ip=actor.ip, user_agent=actor.user_agent)
    return invitation_accept(token=token, actor=joined)
