"""Invitations: the link is signed, expires, works once and only for the invited address; the
database holds only an HMAC of its secret; resending kills the previous link."""

import re
from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Invitation, Membership, Role, User
from accounts.services import (
    Link,
    invitation_accept,
    invitation_create,
    invitation_resend,
    invitation_revoke,
    invitation_signup,
)
from accounts.services.invitations import (
    ALREADY_INVITED,
    INVITATION_EXPIRED,
    INVITATION_INVALID,
    INVITATION_OTHER_ADDRESS,
    INVITATION_REVOKED,
    INVITATION_USED,
)
from infra.errors import ApplicationError
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

LINK = Link(base_url="https://aibaas.example")
LINK_RE = re.compile(r"https://aibaas\.example/accounts/invitations/([^/\s]+)/")


@pytest.fixture
def owner() -> Membership:
    return MembershipFactory(
        organization__name="Acme", user__email="owner@acme.example", user__full_name="Olga Owner"
    )


def as_actor(membership_or_user, role=None) -> Actor:
    user = getattr(membership_or_user, "user", membership_or_user)
    return Actor(user=user, role=role or getattr(membership_or_user, "role", None))


def invite(owner, email="ada@example.com", role=Role.ADMIN) -> Invitation:
    return invitation_create(
        organization=owner.organization, actor=as_actor(owner), email=email, role=role, link=LINK
    )


def token_of(message) -> str:
    return LINK_RE.search(message.body).group(1)


def code_of(fn) -> str:
    with pytest.raises(ApplicationError) as caught:
        fn()
    return caught.value.code


def test_the_email_carries_the_link_and_the_row_only_a_hash(owner, mailoutbox):
    invitation = invite(owner, email="Ada@Example.com")
    [message] = mailoutbox
    assert message.to == ["ada@example.com"]
    assert message.subject == "Olga Owner invited you to join Acme on aibaas"
    assert "as admin" in message.body
    token = token_of(message)
    secret = token.split(":")[0]
    assert len(secret) >= 43  # 32 random bytes
    row = Invitation.objects.filter(pk=invitation.pk).values()[0]
    assert not any(secret in str(value) for value in row.values())
    assert len(invitation.token_hash) == 64 and secret not in invitation.token_hash
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_INVITED)
    assert (event.target_label, event.metadata) == ("ada@example.com", {"role": "admin"})
    assert secret not in str(AuditEvent.objects.values_list())


def test_accepting_joins_with_the_invited_role_once(owner, mailoutbox):
    invite(owner, role=Role.VIEWER)
    token = token_of(mailoutbox[0])
    ada = UserFactory(email="ada@example.com")
    membership = invitation_accept(token=token, actor=as_actor(ada))
    assert (membership.organization, membership.role) == (owner.organization, Role.VIEWER)
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_JOINED)
    assert event.actor_label == "ada@example.com"
    assert event.metadata == {"role": "viewer", "invited_by": "owner@acme.example"}
    assert code_of(lambda: invitation_accept(token=token, actor=as_actor(ada))) == INVITATION_USED


def test_only_the_invited_address_may_accept(owner, mailoutbox):
    invite(owner)
    someone = UserFactory(email="mallory@example.com")
    token = token_of(mailoutbox[0])
    assert code_of(lambda: invitation_accept(token=token, actor=as_actor(someone))) == (
        INVITATION_OTHER_ADDRESS
    )
    assert not Membership.objects.filter(user=someone).exists()


def test_the_link_expires(owner, mailoutbox, settings):
    invite(owner)
    token = token_of(mailoutbox[0])
    ada = UserFactory(email="ada@example.com")
    later = timezone.now() + timedelta(seconds=settings.INVITATION_TTL_SECONDS + 5)
    with time_machine.travel(later, tick=False):
        assert code_of(lambda: invitation_accept(token=token, actor=as_actor(ada))) == (
            INVITATION_EXPIRED
        )


def test_resend_restarts_the_clock_and_kills_the_old_link(owner, mailoutbox, settings):
    invitation = invite(owner)
    old = token_of(mailoutbox[0])
    later = timezone.now() + timedelta(seconds=settings.INVITATION_TTL_SECONDS + 5)
    with time_machine.travel(later, tick=False):
        invitation_resend(
            organization=owner.organization,
            actor=as_actor(owner),
            invitation_id=invitation.pk,
            link=LINK,
        )
        new = token_of(mailoutbox[1])
        ada = UserFactory(email="ada@example.com")
        assert code_of(lambda: invitation_accept(token=old, actor=as_actor(ada))) in (
            INVITATION_EXPIRED,
            INVITATION_INVALID,
        )
        assert invitation_accept(token=new, actor=as_actor(ada)).role == Role.ADMIN
    invitation.refresh_from_db()
    assert invitation.send_count == 2
    assert AuditEvent.objects.filter(action=AuditAction.INVITATION_RESENT).count() == 1


def test_resend_kills_the_old_link_within_its_lifetime(owner, mailoutbox):
    invitation = invite(owner)
    old = token_of(mailoutbox[0])
    invitation_resend(
        organization=owner.organization,
        actor=as_actor(owner),
        invitation_id=invitation.pk,
        link=LINK,
    )
    ada = UserFactory(email="ada@example.com")
    assert code_of(lambda: invitation_accept(token=old, actor=as_actor(ada))) == INVITATION_INVALID


def test_a_revoked_invitation_cannot_be_accepted(owner, mailoutbox):
    invitation = invite(owner)
    invitation_revoke(
        organization=owner.organization, actor=as_actor(owner), invitation_id=invitation.pk
    )
    ada = UserFactory(email="ada@example.com")
    token = token_of(mailoutbox[0])
    assert (
        code_of(lambda: invitation_accept(token=token, actor=as_actor(ada))) == INVITATION_REVOKED
    )
    event = AuditEvent.objects.get(action=AuditAction.INVITATION_REVOKED)
    assert event.target_label == "ada@example.com"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: "x" + t,  # secret changed: the signature no longer matches
        lambda t: "garbage",
    ],
)
def test_a_tampered_link_is_invalid(owner, mailoutbox, mangle):
    invite(owner)
    ada = UserFactory(email="ada@example.com")
    token = mangle(token_of(mailoutbox[0]))
    assert (
        code_of(lambda: invitation_accept(token=token, actor=as_actor(ada))) == INVITATION_INVALID
    )


def test_one_open_invitation_per_address_and_none_for_members(owner, mailoutbox):
    from django.core.exceptions import ValidationError

    invite(owner)
    with pytest.raises(ValidationError) as caught:
        invite(owner, email="ADA@example.com")
    assert ALREADY_INVITED.format(email="ada@example.com") in caught.value.messages
    with pytest.raises(ValidationError):
        invite(owner, email="owner@acme.example")
    assert len(mailoutbox) == 1


def test_signing_up_through_the_link_creates_the_account_and_joins(owner, mailoutbox):
    invite(owner, role=Role.MEMBER)
    membership = invitation_signup(
        token=token_of(mailoutbox[0]),
        password=PASSWORD,
        full_name="Ada",
        actor=Actor(ip="192.0.2.9"),
    )
    assert membership.user.email == "ada@example.com"
    assert membership.user.check_password(PASSWORD)
    assert membership.role == Role.MEMBER
    # No organization of her own: she joined the inviting one only.
    assert list(Membership.objects.filter(user=membership.user)) == [membership]
    actions = list(
        AuditEvent.objects.filter(target_label="ada@example.com")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        AuditAction.MEMBER_INVITED,
        AuditAction.USER_SIGNED_UP,
        AuditAction.MEMBER_JOINED,
    ]


def test_a_mail_server_that_refuses_leaves_no_invitation(owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    with pytest.raises(OSError):
        invite(owner)
    assert not Invitation.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.MEMBER_INVITED).exists()


# --- the pages ---------------------------------------------------------------------------------


def test_opening_the_link_does_not_accept_and_post_does(client, owner, mailoutbox):
    invite(owner, role=Role.VIEWER)
    url = reverse("accounts:invitation", args=[token_of(mailoutbox[0])])
    ada = UserFactory(email="ada@example.com", password=None)
    client.force_login(ada)
    page = client.get(url)
    assert page.status_code == 200
    assert b"Accept invitation" in page.content
    assert not Membership.objects.filter(user=ada).exists()  # a mail scanner's GET joins nobody
    response = client.post(url)
    assert response.status_code == 302 and response.url == reverse("dashboard:overview")
    assert Membership.objects.get(user=ada).role == Role.VIEWER
    overview = client.get(reverse("dashboard:team"))
    assert b"Acme" in overview.content
    assert client.get(url).status_code == 410


def test_the_link_page_signs_a_stranger_up(client, owner, mailoutbox):
    invite(owner)
    url = reverse("accounts:invitation", args=[token_of(mailoutbox[0])])
    assert b"Sign up and join" in client.get(url).content
    response = client.post(url, {"full_name": "Ada", "password": PASSWORD})
    assert response.status_code == 302
    user = User.objects.get(email="ada@example.com")
    assert Membership.objects.get(user=user).role == Role.ADMIN
    assert client.get(reverse("dashboard:team")).status_code == 200  # logged in


def test_the_link_page_sends_an_existing_account_to_log_in(client, owner, mailoutbox):
    UserFactory(email="ada@example.com")
    invite(owner)
    url = reverse("accounts:invitation", args=[token_of(mailoutbox[0])])
    page = client.get(url)
    assert b"Log in to accept" in page.content
    assert f"next={url}".encode() in page.content
    # Posting a signup for an address that has an account creates nothing.
    client.post(url, {"password": PASSWORD})
    assert User.objects.filter(email="ada@example.com").count() == 1
    assert not Membership.objects.filter(user__email="ada@example.com").exists()


def test_the_link_page_for_a_bad_link_says_why(client):
    response = client.get(reverse("accounts:invitation", args=["nope"]))
    assert response.status_code == 404
    assert b"not valid" in response.content


def test_with_email_url_set_the_invitation_goes_out_by_smtp(owner, settings):
    """EMAIL_URL=smtp://… (as a deployment sets it) sends through a real SMTP conversation."""
    import environ
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from tests.servers import free_port

    received = []

    class Inbox(Message):
        def handle_message(self, message):
            received.append(message)

    port = free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        config = environ.Env().email_url_config(f"smtp://127.0.0.1:{port}")
        for name, value in config.items():
            setattr(settings, name, value)
        invite(owner, email="smtp@example.com")
    finally:
        controller.stop()
    [message] = received
    assert message["To"] == "smtp@example.com"
    assert message["Subject"] == "Olga Owner invited you to join Acme on aibaas"
    assert LINK_RE.search(message.get_payload())
