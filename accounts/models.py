from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> "User":
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> "User":
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, email: str) -> "User":
        # Addresses are stored lower-cased, but people type "Ada@Example.com" at the login form.
        return self.get(email=self.normalize_email(email).lower())


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with email; belongs to organizations through memberships."""

    email = models.EmailField(unique=True, help_text="Login and contact address.")
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May log in to the Django admin.")
    date_joined = models.DateTimeField(default=timezone.now)
    jwt_generation = models.PositiveIntegerField(
        default=0,
        editable=False,
        help_text="Bumped by a logout: every management API token issued before stops working.",
    )

    objects = UserManager()

    EMAIL_FIELD = "email"
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="uniq_user_email_ci"),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        # Every way in (signup, commands, admin forms) stores the address lower-cased, so the
        # case-insensitive login lookup finds at most one account.
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def get_full_name(self) -> str:
        return self.full_name or self.email

    def get_short_name(self) -> str:
        return self.full_name.split(" ")[0] if self.full_name else self.email


class Organization(models.Model):
    """The tenant: every customer row belongs to exactly one organization."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True, help_text="Stable public identifier.")
    plan = models.ForeignKey("billing.Plan", on_delete=models.PROTECT, related_name="organizations")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set when its owner deleted it while usage or keys (billing records) keep the "
        "row: members and invitations are gone, keys revoked, the audit log kept.",
    )

    # An operator's custom monthly quotas (the operators' API, admin): empty = the plan's.
    monthly_request_quota = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Custom monthly request quota set by an operator; empty: the plan's.",
    )
    monthly_token_quota = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Custom monthly token quota set by an operator; empty: the plan's.",
    )

    QUOTA_FIELDS = ("monthly_request_quota", "monthly_token_quota")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def quota_limits(self, plan=None) -> dict[str, int | None]:
        """The monthly quotas the organization is held to: its custom ones where an operator set
        them, else `plan`'s (default: its own; None = unlimited)."""
        plan = plan or self.plan
        return {
            field: getattr(plan, field) if getattr(self, field) is None else getattr(self, field)
            for field in self.QUOTA_FIELDS
        }


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


# Higher manages lower: who may grant or act on a role (accounts/services/team_rules.py).
ROLE_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "user__email"]
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="uniq_membership"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization.slug} as {self.role}"

    @property
    def is_admin(self) -> bool:
        """Owners and admins manage the whole organization."""
        return self.role in (Role.OWNER, Role.ADMIN)

    @property
    def can_write(self) -> bool:
        """Viewers only read; every other role may change what it owns."""
        return self.role != Role.VIEWER


class Invitation(models.Model):
    """An invitation to join an organization with a role, sent by email.

    Only a hash of the link's secret is stored (the raw secret lives in the email alone); the
    link is signed with a timestamp, expires, and works once. Resending issues a new secret, so
    the previous link dies.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField(help_text="Who is invited (lower-cased); only they can accept.")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(
        max_length=64, unique=True, editable=False, help_text="HMAC-SHA256 of the link's secret."
    )
    invited_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(default=timezone.now, help_text="Last (re)sent.")
    send_count = models.PositiveIntegerField(default=1)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                "organization",
                Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="uniq_open_invitation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization_id} as {self.role}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired else "pending"


class AuditAction(models.TextChoices):
    LOGIN_SUCCEEDED = "login.succeeded", "Login succeeded"
    LOGIN_FAILED = "login.failed", "Login failed"
    KEY_CREATED = "key.created", "Key created"
    KEY_UPDATED = "key.updated", "Key updated"
    KEY_ROTATED = "key.rotated", "Key rotated"
    KEY_REVOKED = "key.revoked", "Key revoked"
    RATE_LIMIT_REFUSED = "rate_limit.refused", "Request refused by a limit"
    QUOTA_RESET = "quota.reset", "Monthly quota reset"
    QUOTA_CHANGED = "quota.changed", "Custom monthly quota changed"
    ORGANIZATION_DELETED = "organization.deleted", "Organization deleted"
    USER_SIGNED_UP = "user.signed_up", "Signed up"
    ORGANIZATION_CREATED = "organization.created", "Organization created"
    ORGANIZATION_RENAMED = "organization.renamed", "Organization renamed"
    MEMBER_INVITED = "member.invited", "Member invited"
    INVITATION_RESENT = "invitation.resent", "Invitation resent"
    INVITATION_REVOKED = "invitation.revoked", "Invitation revoked"
    MEMBER_JOINED = "member.joined", "Member joined"
    MEMBER_ROLE_CHANGED = "member.role_changed", "Member's role changed"
    MEMBER_REMOVED = "member.removed", "Member removed"
    MEMBER_LEFT = "member.left", "Member left"
    OWNERSHIP_TRANSFERRED = "organization.ownership_transferred", "Ownership transferred"
    # Emitted by billing (billing/subscriptions) and the operators' paths; labelled here, where
    # the audit log is read.
    PLAN_CHANGED = "plan.changed", "Plan changed"
    CHECKOUT_STARTED = "billing.checkout_started", "Checkout started"
    CANCEL_REQUESTED = "billing.cancel_requested", "Cancellation requested"
    CANCEL_WITHDRAWN = "billing.cancel_withdrawn", "Cancellation withdrawn"
    CANCELED_NOW = "billing.canceled_now", "Subscription canceled by an operator"
    CATALOGUE_CHANGED = "catalogue.changed", "Model or price changed by an operator"


class AuditEvent(models.Model):
    """One thing that happened, by whom, from where. Append-only: nothing updates or deletes it.

    `action` is a free dotted name (the AuditAction choices are the ones the project emits) so
    later features can add actions without a migration. The row outlives what it names: its
    organization, user or key may be deleted (the link becomes empty), while the identifiers
    copied onto the row (organization slug, actor email or key id, target id) stay.
    """

    organization = models.ForeignKey(
        Organization,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="audit_events",
        help_text="Empty once the organization is deleted; organization_slug keeps its name.",
    )
    organization_slug = models.CharField(
        max_length=60, blank=True, help_text="The organization's slug when the event happened."
    )
    actor_user = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_events"
    )
    actor_key_id = models.CharField(
        max_length=12, blank=True, help_text="Public id of the API key that acted, if any."
    )
    actor_label = models.CharField(
        max_length=254, blank=True, help_text="Who acted, as shown (email, key id, 'system')."
    )
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(
        max_length=254,
        blank=True,
        help_text="What was acted on, as people read it (an email, a key's name and id).",
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="audit_org_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor_label}"
