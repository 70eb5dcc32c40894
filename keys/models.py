from django.conf import settings
from django.db import models
from django.utils import timezone


class Scope(models.TextChoices):
    INFERENCE = "inference", "inference: call /v1 models"
    USAGE_READ = "usage:read", "usage:read: read the organization's usage"
    KEYS_WRITE = "keys:write", "keys:write: manage the organization's keys"
    ADMIN = "admin", "admin: everything the organization may do"


DEFAULT_SCOPES = [Scope.INFERENCE.value]


class ApiKeyStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


def effective_limit(override: int | None, plan_value: int | None) -> int | None:
    """A key's limit: its override can only lower the plan's (None = unlimited)."""
    if override is None:
        return plan_value
    if plan_value is None:
        return override
    return min(override, plan_value)


def _limit_override() -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Lower than the plan's limit for this key only; empty = the plan's.",
    )


class ApiKey(models.Model):
    """A machine credential of one organization. Only an argon2id hash of the key is stored."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, help_text="What the key is for, e.g. 'prod backend'.")
    key_id = models.CharField(
        max_length=12, unique=True, editable=False, help_text="Public id inside the key."
    )
    key_hash = models.CharField(max_length=200, editable=False)
    hint = models.CharField(max_length=24, editable=False, help_text="Non-secret reminder.")
    scopes = models.JSONField(default=list, help_text="Granted scopes.")
    allowed_models = models.JSONField(
        null=True, blank=True, help_text="Model allow-list; empty means every model of the plan."
    )
    requests_per_minute = _limit_override()
    requests_per_day = _limit_override()
    tokens_per_minute = _limit_override()
    tokens_per_day = _limit_override()
    test_mode = models.BooleanField(default=False, help_text="sk_test_ key: demo models only.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="The person whose role bounds this key (its effective scopes).",
    )
    operator_issued = models.BooleanField(
        default=False,
        editable=False,
        help_text="Issued by an operator (manage.py, admin): keeps its scopes, has no creator.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=500, blank=True)
    rotated_from = models.OneToOneField(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="rotated_to",
        help_text="The key this one replaced.",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    LIMIT_FIELDS = (
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "revoked_at"], name="apikey_org_live")]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint})"

    def status_at(self, now) -> str:
        if self.revoked_at is not None:
            return ApiKeyStatus.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return ApiKeyStatus.EXPIRED
        return ApiKeyStatus.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())

    def effective_limits(self, plan, organization=None) -> dict:
        """The limits this key is held to under `plan` (its organization's): each per-key limit
        is the lower of the key's override and the plan's value (None = unlimited on either
        side), so an override only ever tightens, and a plan downgrade caps every key at once
        however high an override was set before; the monthly quotas and the burst settings are
        the plan's, or the organization's custom ones an operator set (pass `organization`).
        The shape of KeyContext.limits."""
        limits = {
            field: effective_limit(getattr(self, field), getattr(plan, field))
            for field in self.LIMIT_FIELDS
        }
        if organization is not None:
            limits |= organization.quota_limits(plan)
        else:
            limits["monthly_request_quota"] = plan.monthly_request_quota
            limits["monthly_token_quota"] = plan.monthly_token_quota
        # Bursts are a plan setting (metering/limiter: limits_for); 0 % is off.
        limits["burst_percent"] = plan.burst_percent
        limits["burst_seconds"] = plan.burst_seconds
        return limits

    @property
    def is_live(self) -> bool:
        return self.status == ApiKeyStatus.ACTIVE


class ApiKeyChange(models.Model):
    """One change to a key that caches must see (revoked, rotated, edited, its plan or its
    creator's membership changed). Append-only, written in the transaction of the change; every
    serving process polls for rows newer than the last it saw and drops those keys from its
    caches (keys/changes.py). Pruned after API_KEY_CHANGE_RETENTION seconds."""

    key_id = models.CharField(max_length=12)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.key_id} changed at {self.at:%Y-%m-%d %H:%M:%S}"
