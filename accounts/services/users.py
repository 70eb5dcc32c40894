"""Writes of users: creating an account (with a password, or one to set by reset) and ending
the management API tokens it holds."""

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import User

EMAIL_TAKEN = "An account with this email address already exists."


@transaction.atomic
def user_create(*, email: str, password: str | None, full_name: str = "") -> User:
    """Create a user. `password=None` makes an account that must set one by password reset."""
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": "Enter a valid email address."}) from None
    if User.objects.filter(email__iexact=email).exists():
        raise ValidationError({"email": EMAIL_TAKEN})
    user = User(email=email, full_name=full_name.strip())
    if password is not None:
        validate_password(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise ValidationError({"email": EMAIL_TAKEN}) from None
    return user


@transaction.atomic
def user_tokens_revoke(*, user: User) -> None:
    """End every management API token (JWT, access and refresh) the user holds: a logout.

    A password change needs no call: the tokens' `ver` claim covers the password hash
    (accounts/tokens.py), whichever path changed it.
    """
    User.objects.filter(pk=user.pk).update(jwt_generation=F("jwt_generation") + 1)
    user.refresh_from_db(fields=["jwt_generation"])
