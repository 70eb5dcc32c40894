import functools

import factory
from django.contrib.auth.hashers import make_password
from factory.django import DjangoModelFactory

from accounts.models import Membership, Organization, Role, User
from billing.models import Plan

PASSWORD = "correct-horse-battery-staple-42"


@functools.cache
def _password_hash(raw: str | None) -> str:
    return make_password(raw)


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    # Real argon2 hashes, computed once per distinct password: hashing costs ~0.2 s each.
    password = factory.Transformer(PASSWORD, transform=_password_hash)


class OrganizationFactory(DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    plan = factory.LazyFunction(lambda: Plan.objects.get(slug="free"))


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.OWNER
