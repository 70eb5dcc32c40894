"""ENV_FILE: which dotenv file the settings read (fresh interpreters: settings load once)."""

import os
import subprocess
import sys

from aibaas.settings.env import BASE_DIR

PRINT = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.DEBUG, settings.SECRET_KEY[:6], settings.ENV_FILE)"
)


def run(env_file: str | None, tmp_path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ENV_FILE")}
    env.update(DJANGO_SETTINGS_MODULE="aibaas.settings", **extra)
    if env_file is not None:
        env["ENV_FILE"] = env_file
    return subprocess.run(
        [sys.executable, "-c", PRINT], env=env, cwd=BASE_DIR, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_env_file_is_read(tmp_path):
    dotenv = tmp_path / "local.env"
    dotenv.write_text("DEBUG=1\nSECRET_KEY=from-the-file-" + "x1y2z3" * 10 + "\n")

    result = run(str(dotenv), tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "from-t", str(dotenv)]


def test_the_environment_wins_over_the_file(tmp_path):
    dotenv = tmp_path / "local.env"
    dotenv.write_text("DEBUG=1\nSECRET_KEY=from-the-file-" + "x1y2z3" * 10 + "\n")

    result = run(str(dotenv), tmp_path, SECRET_KEY="environment-wins-" + "k9" * 30)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "enviro"


def test_an_empty_env_file_reads_none(tmp_path):
    result = run("", tmp_path)

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_a_missing_env_file_is_a_clear_error(tmp_path):
    result = run(str(tmp_path / "nope.env"), tmp_path)

    assert result.returncode != 0
    assert "ENV_FILE names" in result.stderr and "not a file" in result.stderr


def test_a_relative_env_file_is_relative_to_the_repository(tmp_path):
    result = run("no-such-dir/x.env", tmp_path)
    assert str(BASE_DIR / "no-such-dir/x.env") in result.stderr
