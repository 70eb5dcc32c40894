"""Who is acting: a dashboard/JWT user with a role, an API key, or the system (commands)."""

from dataclasses import dataclass

from accounts.models import Role, User
from infra.http import client_ip, user_agent


@dataclass(frozen=True, slots=True)
class Actor:
    user: User | None = None
    key_id: str = ""
    role: str | None = None
    ip: str | None = None
    user_agent: str = ""
    system: str = ""

    @property
    def label(self) -> str:
        if self.user is not None:
            return self.user.email
        if self.key_id:
            return f"key {self.key_id}"
        return self.system or "system"

    @property
    def is_admin(self) -> bool:
        return self.system != "" or self.role in (Role.OWNER, Role.ADMIN)

    @property
    def can_write(self) -> bool:
        return self.system != "" or self.role in (Role.OWNER, Role.ADMIN, Role.MEMBER)

    @classmethod
    def for_system(cls, name: str = "manage.py") -> "Actor":
        return cls(system=name)

    @classmethod
    def for_user(cls, request, user: User, role: str | None) -> "Actor":
        return cls(user=user, role=role, ip=client_ip(request), user_agent=user_agent(request))

    @classmethod
    def for_key(cls, request, key_id: str, role: str | None) -> "Actor":
        return cls(key_id=key_id, role=role, ip=client_ip(request), user_agent=user_agent(request))

    @classmethod
    def for_operator(cls, request) -> "Actor":
        """A staff user at the Django admin, as the audit log records them (with their address)."""
        return cls(
            user=request.user,
            role="admin",
            system="admin",
            ip=client_ip(request),
            user_agent=user_agent(request),
        )
