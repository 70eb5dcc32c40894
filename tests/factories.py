import functools
from decimal import Decimal

import factory
from django.contrib.auth.hashers import make_password
from factory.django import DjangoModelFactory

from accounts.models import Membership, Organization, Role, User
from aibaas.gateway.models import AIModel, ModelKind, ProviderKind, Upstream
from billing.models import ModelPrice, Plan

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


class AIModelFactory(DjangoModelFactory):
    """A demo chat model by default; `provider=ProviderKind.OPENAI_COMPATIBLE` with
    `UpstreamFactory(model=...)` for an upstream-backed one."""

    class Meta:
        model = AIModel

    name = factory.Sequence(lambda n: f"model-{n}")
    kind = ModelKind.CHAT
    provider = ProviderKind.DEMO
    context_window = 8192
    enabled = True
    test_mode_allowed = False


class UpstreamFactory(DjangoModelFactory):
    class Meta:
        model = Upstream

    model = factory.SubFactory(
        AIModelFactory, provider=ProviderKind.OPENAI_COMPATIBLE, test_mode_allowed=False
    )
    base_url = factory.Sequence(lambda n: f"http://upstream-{n}:8000/v1")
    upstream_model = "llama-3-8b"
    api_key_env = "UPSTREAM_API_KEY"
    weight = 1
    timeout_seconds = 30.0
    connect_timeout_seconds = 2.0
    enabled = True


class ModelPriceFactory(DjangoModelFactory):
    class Meta:
        model = ModelPrice

    model = factory.SubFactory(AIModelFactory)
    input_per_million = Decimal("1.00")
    output_per_million = Decimal("2.00")
    cached_input_per_million = None
