"""Settings, read from the environment (django-environ) and split by concern.

`.env` in the repository root is read for local development only; every variable is documented
in `.env.example`. Integrations switch on when their variable is set: no `REDIS_URL` means an
in-process cache, no `CELERY_BROKER_URL` means tasks run eagerly.
"""

from .api import *  # noqa: F403
from .base import *  # noqa: F403
from .gateway import *  # noqa: F403
from .security import *  # noqa: F403
from .services import *  # noqa: F403
