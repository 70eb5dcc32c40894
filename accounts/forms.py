from django import forms
from django.contrib.auth import password_validation


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
