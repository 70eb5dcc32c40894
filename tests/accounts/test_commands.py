import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import Membership, Organization, Role, User
from aibaas.gateway.models import AIModel
from billing.defaults import DEFAULT_PLANS
from billing.models import ModelPrice, Plan
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count() for model in (Plan, User, Organization, Membership)
    }


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_creates_the_four_plans_with_their_default_limits():
    Plan.objects.all().delete()  # as on a database whose seed migration was faked

    output = run("bootstrap")

    assert "Plans: 4 created" in output
    assert list(Plan.objects.values_list("slug", flat=True)) == [
        "free",
        "starter",
        "pro",
        "enterprise",
    ]
    for spec in DEFAULT_PLANS:
        plan = Plan.objects.get(slug=spec["slug"])
        for field, value in spec.items():
            assert getattr(plan, field) == value, (spec["slug"], field)


def test_bootstrap_creates_the_demo_org_and_an_owner_who_can_log_in_with_the_printed_password(
    client,
):
    output = run("bootstrap")

    organization = Organization.objects.get(slug="demo")
    membership = Membership.objects.get(organization=organization)
    assert membership.user.email == "demo@example.com"
    assert membership.role == Role.OWNER
    assert organization.plan.slug == "free"
    printed = re.search(r"password:\s+(\S+)", output)
    assert printed, output
    response = client.post(
        reverse("accounts:login"),
        {"username": "demo@example.com", "password": printed.group(1)},
    )
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert b"Demo" in client.get("/dashboard/").content


def test_bootstrap_twice_changes_nothing():
    run("bootstrap")
    before = counts()
    demo = User.objects.get(email="demo@example.com")

    output = run("bootstrap")

    assert counts() == before
    assert "Plans: 0 created, 4 already present" in output
    assert "Created demo organization" not in output
    assert User.objects.get(email="demo@example.com").password == demo.password


def test_bootstrap_keeps_a_changed_demo_password():
    run("bootstrap")
    demo = User.objects.get(email="demo@example.com")
    demo.set_password(PASSWORD)
    demo.save()

    run("bootstrap")

    demo.refresh_from_db()
    assert demo.check_password(PASSWORD)


def test_bootstrap_no_demo_seeds_plans_only():
    Plan.objects.all().delete()
    run("bootstrap", "--no-demo")
    assert Plan.objects.count() == 4
    assert not Organization.objects.exists()
    assert not User.objects.exists()
    assert not AIModel.objects.exists()
    assert not ModelPrice.objects.exists()


# --- create_org ------------------------------------------------------------------------------


def test_create_org_prints_the_slug_alone_on_its_last_line_and_makes_an_owner(client):
    output = run(
        "create_org", "--name", "Acme Corp", "--owner-email", "boss@acme.example",
        "--password", PASSWORD,
    )  # fmt: skip

    assert output.splitlines()[-1] == "acme-corp"
    organization = Organization.objects.get(slug="acme-corp")
    assert organization.name == "Acme Corp"
    assert organization.plan.slug == "free"
    membership = Membership.objects.get(organization=organization)
    assert membership.user.email == "boss@acme.example"
    assert membership.role == Role.OWNER
    response = client.post(
        reverse("accounts:login"), {"username": "boss@acme.example", "password": PASSWORD}
    )
    assert response["Location"] == "/dashboard/"


def test_create_org_with_a_plan():
    slug = run("create_org", "--name", "Big", "--owner-email", "b@big.example", "--plan", "pro")
    assert Organization.objects.get(slug=slug.splitlines()[-1]).plan.slug == "pro"


def test_create_org_without_password_gives_the_new_owner_no_usable_password():
    run("create_org", "--name", "Nopass", "--owner-email", "np@example.com")
    assert not User.objects.get(email="np@example.com").has_usable_password()


def test_create_org_reuses_an_existing_user_and_keeps_their_password():
    existing = MembershipFactory(user__email="dev@example.com")
    users_before = User.objects.count()

    output = run(
        "create_org", "--name", "Side Project", "--owner-email", "DEV@example.com",
        "--password", "ignored-for-existing-users-123",
    )  # fmt: skip

    assert User.objects.count() == users_before
    assert "Created user" not in output
    organization = Organization.objects.get(slug=output.splitlines()[-1])
    assert Membership.objects.get(organization=organization).user == existing.user
    assert Membership.objects.get(organization=organization).role == Role.OWNER
    existing.user.refresh_from_db()
    assert existing.user.check_password(PASSWORD)
    assert existing.user.memberships.count() == 2


def test_create_org_name_collision_gives_a_distinct_slug():
    first = run("create_org", "--name", "Acme", "--owner-email", "a@example.com")
    second = run("create_org", "--name", "Acme", "--owner-email", "b@example.com")
    assert first.splitlines()[-1] == "acme"
    assert second.splitlines()[-1] == "acme-2"
    assert Organization.objects.filter(name="Acme").count() == 2


def test_create_org_with_an_explicit_slug():
    output = run("create_org", "--name", "Acme", "--owner-email", "a@example.com", "--slug", "ac")
    assert output.splitlines()[-1] == "ac"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "gold"], "No plan with slug 'gold'. Known plans: free, starter, pro"),
        (["--owner-email", "not-an-email"], "Enter a valid email address."),
        (["--password", "123"], "too short"),
        (["--password", "password"], "too common"),
        (["--name", "   "], "An organization needs a name."),
        (["--slug", "taken"], "An organization with this slug already exists."),
        (["--slug", "!!!"], "The slug must contain letters or digits."),
    ],
)
def test_create_org_bad_input_is_a_clear_command_error_and_creates_nothing(args, message):
    OrganizationFactory(slug="taken")
    before = counts()
    options = {"--name": "Acme", "--owner-email": "new@example.com"}
    options.update(dict(zip(args[::2], args[1::2], strict=True)))

    with pytest.raises(CommandError, match=re.escape(message)):
        run("create_org", *[part for pair in options.items() for part in pair])

    assert counts() == before


# --- set_plan ----------------------------------------------------------------------------------


def test_set_plan_moves_the_organization_to_the_plan():
    organization = OrganizationFactory(slug="acme")

    output = run("set_plan", "--org", "acme", "--plan", "pro")

    organization.refresh_from_db()
    assert organization.plan.slug == "pro"
    assert "acme: plan free -> pro" in output


@pytest.mark.parametrize(
    ("org", "plan", "message"),
    [
        ("nope", "pro", "No organization with slug 'nope'."),
        ("acme", "gold", "No plan with slug 'gold'."),
    ],
)
def test_set_plan_unknown_org_or_plan_is_a_command_error(org, plan, message):
    organization = OrganizationFactory(slug="acme")
    with pytest.raises(CommandError, match=re.escape(message)):
        run("set_plan", "--org", org, "--plan", plan)
    organization.refresh_from_db()
    assert organization.plan.slug == "free"


def test_commands_that_need_arguments_say_so():
    with pytest.raises(CommandError, match="--name"):
        run("create_org", "--owner-email", "x@example.com")
    with pytest.raises(CommandError, match="--plan"):
        run("set_plan", "--org", "acme")


def test_bootstrap_prints_a_working_demo_key_only_when_it_creates_it(client):
    from keys.format import KEY_PATTERN
    from keys.models import ApiKey

    first = run("bootstrap")
    keys = KEY_PATTERN.findall(first)
    printed = re.search(r"sk_live_\S+", first).group(0)
    assert len(keys) == 1
    assert ApiKey.objects.filter(organization__slug="demo").count() == 1
    response = client.get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {printed}")
    assert response.status_code == 200
    assert response.json()["organization"] == "demo"

    second = run("bootstrap")
    assert "sk_live_" not in second
    assert ApiKey.objects.filter(organization__slug="demo").count() == 1
