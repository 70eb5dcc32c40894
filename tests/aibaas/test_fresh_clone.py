"""After `make run` on a fresh clone, the README's `manage.py` commands work as written in a new
shell: the Makefile's .env step writes DEBUG and a generated SECRET_KEY once, git-ignored, and
the settings read it. Run in a real `git clone` of this repository, with nothing set in the
environment but PATH and HOME."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aibaas.settings.env import BASE_DIR

README = BASE_DIR / "README.md"
# The commands the README's operator table lists: "| `create_org --name NAME ...` | ...".
_COMMAND_ROW = re.compile(r"^\| `([a-z_]+)[ `]", re.MULTILINE)


def readme_commands() -> list[str]:
    text = README.read_text()
    start = text.index("### Operators: `manage.py` commands")
    section = text[start : text.index("\n### ", start + 1)]
    return _COMMAND_ROW.findall(section)


def _missing_tools() -> str | None:
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    if not (BASE_DIR / ".git").exists():
        return f"{BASE_DIR} is not a git checkout"
    return None


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    target = tmp_path_factory.mktemp("fresh") / "aibaas"
    subprocess.run(["git", "clone", "-q", str(BASE_DIR), str(target)], check=True, timeout=120)
    # The virtualenv `make run` would create: the one running these tests (no installs here).
    venv = Path(sys.prefix)
    (target / ".venv").symlink_to(venv, target_is_directory=True)
    return target


def new_shell_env(clone: Path) -> dict[str, str]:
    """A new shell's environment: PATH and HOME, no DEBUG, SECRET_KEY or service URLs."""
    return {"PATH": os.environ["PATH"], "HOME": str(clone), "LANG": "C.UTF-8"}


def sh(clone: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args,
        cwd=clone,
        env=env or new_shell_env(clone),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


def manage(clone: Path, *args: str, **extra_env: str) -> str:
    env = {**new_shell_env(clone), **extra_env}
    return sh(clone, ".venv/bin/python", "manage.py", *args, env=env)


def test_readme_commands_work_as_written_after_the_env_step(clone):
    # Without the .env step the README's commands refuse to start (the reported defect).
    result = subprocess.run(
        [".venv/bin/python", "manage.py", "check"],
        cwd=clone,
        env=new_shell_env(clone),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr

    sh(clone, "make", ".env")

    dotenv = (clone / ".env").read_text()
    assert "DEBUG=1" in dotenv.splitlines()
    secret = re.search(r"^SECRET_KEY=(\S+)$", dotenv, re.MULTILINE).group(1)
    assert len(secret) >= 50
    assert (clone / ".env").stat().st_mode & 0o077 == 0  # readable by its owner only
    assert sh(clone, "git", "status", "--porcelain") == ""  # git-ignored

    # `manage.py help` lists the project's commands, every one the README names.
    listed = manage(clone, "help")
    commands = readme_commands()
    assert {"bootstrap", "create_org", "create_key", "revoke_key"} <= set(commands)
    for command in commands:
        assert re.search(rf"^\s+{command}$", listed, re.MULTILINE), f"{command} not in help"

    # What `make run` does before serving, then the README's commands as an operator types them.
    manage(clone, "migrate", "--no-input")
    assert "Demo API key" in manage(clone, "bootstrap")
    manage(
        clone,
        "createsuperuser",
        "--no-input",
        "--email",
        "ops@example.com",
        DJANGO_SUPERUSER_PASSWORD="an-operator-passphrase-91",
    )
    slug = manage(
        clone, "create_org", "--name", "Acme Corp", "--owner-email", "boss@acme.example"
    ).splitlines()[-1]
    assert slug == "acme-corp"
    manage(clone, "set_plan", "--org", slug, "--plan", "starter")
    issued = json.loads(
        manage(clone, "create_key", "--org", slug, "--name", "backend", "--rpm", "30", "--json")
    )
    rotated = json.loads(manage(clone, "rotate_key", issued["key_id"], "--grace", "0", "--json"))
    manage(clone, "revoke_key", rotated["key_id"], "--reason", "leaked")
    report = json.loads(manage(clone, "usage_report", "--org", slug, "--format", "json"))
    assert report is not None
    manage(clone, "reset_usage", "--org", slug, "--reason", "support ticket")

    # The step never overwrites a .env someone already has.
    sh(clone, "make", ".env")
    assert (clone / ".env").read_text() == dotenv
