"""Who may change which key, and what they may put in it.

Two checks, used by every write on keys whatever the path (API by session, JWT or key; the
dashboard; the admin; manage.py): the role check (owners and admins manage every key, members
the keys they created, viewers none) and the grant rule — nobody creates, widens or rotates a
key to more than they hold themselves (keys/scopes.py: a user holds their role's scopes, a key
its effective scopes, an operator everything).
"""

from dataclasses import dataclass

from accounts.actors import Actor
from accounts.models import Organization
from infra.errors import ApplicationError
from keys.models import ApiKey
from keys.scopes import ALL_SCOPES, implied, role_scopes
from keys.selectors import api_key_effective_scopes

FORBIDDEN = "forbidden"
SCOPE_NOT_HELD = "scope_not_held"
SCOPE_NOT_HELD_MESSAGE = (
    "Nobody grants more than they hold: you do not hold {missing}, so no key you create, "
    "change or rotate can have it. You hold: {held}."
)


@dataclass(frozen=True, slots=True)
class Grantor:
    """What an actor holds in an organization, and whose role bounds the keys it makes.

    A key made by a person is bound to that person; one made through the API by a key, to that
    key's person (or it is operator-issued like that key); one made by an operator to nobody.
    """

    held: frozenset[str]
    created_by_id: int | None
    operator_issued: bool

    def require(self, scopes) -> None:
        """403 scope_not_held unless every one of `scopes` is held."""
        missing = sorted(set(scopes) - self.held)
        if missing:
            raise ApplicationError(
                SCOPE_NOT_HELD,
                SCOPE_NOT_HELD_MESSAGE.format(
                    missing=", ".join(missing), held=", ".join(sorted(self.held)) or "no scope"
                ),
                status=403,
                param="scopes",
            )


def grantor_of(actor: Actor, organization: Organization) -> Grantor:
    """What `actor` holds in `organization`, read now (a demotion counts at once)."""
    if actor.system:  # an operator: manage.py, the Django admin
        return Grantor(held=ALL_SCOPES, created_by_id=None, operator_issued=True)
    if actor.key_id:
        key = (
            ApiKey.objects.filter(key_id=actor.key_id, organization_id=organization.pk)
            .only("scopes", "operator_issued", "created_by_id", "organization_id")
            .first()
        )
        if key is None:
            return Grantor(held=frozenset(), created_by_id=None, operator_issued=False)
        return Grantor(
            held=implied(api_key_effective_scopes(key)),
            created_by_id=key.created_by_id,
            operator_issued=key.operator_issued,
        )
    return Grantor(
        held=role_scopes(actor.role),
        created_by_id=actor.user.pk if actor.user is not None else None,
        operator_issued=False,
    )


def require_manage(actor: Actor, api_key: ApiKey | None) -> None:
    """Owners/admins (and keys, bounded by their scopes) manage every key; members the keys
    they created; viewers none."""
    if actor.is_admin:
        return
    if not actor.can_write:
        raise ApplicationError(FORBIDDEN, "Viewers cannot change API keys.", status=403)
    if api_key is not None and (actor.user is None or api_key.created_by_id != actor.user.pk):
        raise ApplicationError(
            FORBIDDEN, "Members can only change the keys they created.", status=403
        )
