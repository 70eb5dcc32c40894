"""The one `environ.Env` instance every settings module reads from.

A dotenv file is for local development only (`make run` writes `.env` once, with DEBUG on and a
generated SECRET_KEY); real deployments set the environment and need none. Variables already in
the environment win over the file. `ENV_FILE` chooses the file: unset means `.env` in the
repository root if there is one, empty means none, a path means that file (which must exist).
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()


def _env_file() -> Path | None:
    chosen = os.environ.get("ENV_FILE")
    if chosen is None:
        default = BASE_DIR / ".env"
        return default if default.is_file() else None
    if not chosen.strip():
        return None
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        path = BASE_DIR / path
    if not path.is_file():
        raise ImproperlyConfigured(f"ENV_FILE names {path}, which is not a file.")
    return path


ENV_FILE = _env_file()
if ENV_FILE is not None:
    env.read_env(str(ENV_FILE), overwrite=False)
