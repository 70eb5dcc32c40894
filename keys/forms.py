from django import forms

from keys.models import DEFAULT_SCOPES, Scope

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7d", "In 7 days"),
    ("30d", "In 30 days"),
    ("90d", "In 90 days"),
    ("365d", "In 1 year"),
]

LIMIT_HELP = "At most your plan's limit. Empty: the plan's limit."

GRACE_CHOICES = [
    ("0", "Immediately"),
    ("1h", "After 1 hour"),
    ("24h", "After 24 hours (default)"),
    ("7d", "After 7 days"),
]


def _limit_field(label: str) -> forms.IntegerField:
    """A per-key limit override: empty keeps the plan's."""
    return forms.IntegerField(required=False, min_value=1, label=label, help_text=LIMIT_HELP)


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. 'prod backend'.")
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        initial=DEFAULT_SCOPES,
        widget=forms.CheckboxSelectMultiple,
        help_text="Give a key only what it needs.",
    )
    models = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Comma-separated model names this key may use. Empty: every model.",
    )
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")
    test_mode = forms.BooleanField(
        required=False, label="Test key (sk_test_…): demo models only, never billed"
    )
    # Limit overrides only tighten the plan (keys/services.py checks it against the plan).
    requests_per_minute = _limit_field("Requests / minute")
    requests_per_day = _limit_field("Requests / day")
    tokens_per_minute = _limit_field("Tokens / minute")
    tokens_per_day = _limit_field("Tokens / day")

    def clean_models(self) -> list[str] | None:
        value = self.cleaned_data["models"]
        return [m.strip() for m in value.split(",") if m.strip()] or None


class KeyRevokeForm(forms.Form):
    reason = forms.CharField(
        max_length=500, required=False, help_text="Recorded in the audit log, e.g. 'leaked'."
    )


class KeyRotateForm(forms.Form):
    grace = forms.ChoiceField(
        choices=GRACE_CHOICES, initial="24h", label="The old key stops working"
    )


KEEP = "keep"
EDIT_EXPIRY_CHOICES = [(KEEP, "Unchanged"), *EXPIRY_CHOICES]


class KeyEditForm(forms.Form):
    """Edit a key: the choices say what the editor may pick; keys.services.api_key_update
    decides (the scopes the editor holds, the plan's limits), as for PATCH /api/keys/{id}."""

    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only scopes you hold yourself can be given.",
    )
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Models",
        help_text="None ticked: every model.",
    )
    expires = forms.ChoiceField(choices=EDIT_EXPIRY_CHOICES, required=False, initial=KEEP)
    requests_per_minute = _limit_field("Requests / minute")
    requests_per_day = _limit_field("Requests / day")
    tokens_per_minute = _limit_field("Tokens / minute")
    tokens_per_day = _limit_field("Tokens / day")

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(name, name) for name in models]
