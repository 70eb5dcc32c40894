import unicodedata

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import password_validation

from accounts.models import Role, User


class SignupForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )
    full_name = forms.CharField(label="Your name", max_length=150, required=False)
    organization_name = forms.CharField(
        label="Organization",
        max_length=100,
        required=False,
        help_text="Your company or project. You can rename it later.",
    )
    password = forms.CharField(
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )


class OrganizationForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=100)


def _same_address(a: str, b: str) -> bool:
    return (
        unicodedata.normalize("NFKC", a).casefold() == unicodedata.normalize("NFKC", b).casefold()
    )


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's reset form, but it also mails active users who have no usable password yet.

    Django skips them because elsewhere that means "logs in through an external provider". Here
    it means "never chose one": `create_org` without --password creates such an owner and
    promises they set their password through this very form.
    """

    def get_users(self, email: str):
        users = User._default_manager.filter(email__iexact=email, is_active=True)
        # As Django does: no match through a database's looser Unicode case folding.
        return (user for user in users if _same_address(email, user.email))


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args, grantable: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if grantable is not None:  # the choices the inviter may grant (the service checks too)
            self.fields["role"].choices = [c for c in Role.choices if c[0] in grantable]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class RenameForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=100)


class DeleteOrganizationForm(forms.Form):
    confirmation = forms.CharField(
        label="Type the organization's name to confirm",
        max_length=100,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class InvitationSignupForm(forms.Form):
    full_name = forms.CharField(label="Your name", max_length=150, required=False)
    password = forms.CharField(
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )


AUDIT_DATE_FORMAT = "%Y-%m-%d"
AUDIT_BAD_DATE = "Enter a date as YYYY-MM-DD."
AUDIT_RANGE_REVERSED = "The end date is before the start date."


class AuditFilterForm(forms.Form):
    """The audit log's filters, one parser for the page, its CSV and GET /api/audit: `action` a
    prefix ('key.' or 'key.revoked'), `actor` part of the actor's label, `since`/`until` whole
    UTC days (ISO dates), both included."""

    action = forms.CharField(required=False, max_length=64)
    actor = forms.CharField(required=False, max_length=254)
    since = forms.DateField(
        label="From",
        required=False,
        input_formats=[AUDIT_DATE_FORMAT],
        error_messages={"invalid": AUDIT_BAD_DATE},
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = forms.DateField(
        label="To",
        required=False,
        input_formats=[AUDIT_DATE_FORMAT],
        error_messages={"invalid": AUDIT_BAD_DATE},
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def clean(self):
        data = super().clean()
        for name in ("action", "actor"):
            data[name] = (data.get(name) or "").strip()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", AUDIT_RANGE_REVERSED)
        return data

    def filters(self) -> dict:
        """The keyword arguments of accounts.audit.audit_list (call after is_valid())."""
        data = self.cleaned_data
        return {
            "action": data.get("action") or None,
            "actor": data.get("actor") or None,
            "since": data.get("since"),
            "until": data.get("until"),
        }

    def first_error(self) -> tuple[str | None, str]:
        """(parameter, message) of the first problem, for the API's and the CSV's 400."""
        field, errors = next(iter(self.errors.items()))
        return (None if field == "__all__" else field), f"{field}: {errors[0]}"
