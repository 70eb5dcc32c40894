"""Run the benchmarks: `python -m aibaas.bench [keys ...]` (default: all).

Uses DATABASE_URL / REDIS_URL when set (the production components), else a throwaway SQLite
file and the in-process cache. It creates its own organization and keys and never touches
anything else in the database.
"""

import argparse
import os
import secrets
import sys
import tempfile

BENCHES = ["keys", "limiter", "gateway", "usage"]


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")
    os.environ.setdefault("DEBUG", "False")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("STATIC_MANIFEST", "False")
    if not os.environ.get("DATABASE_URL"):
        path = os.path.join(tempfile.mkdtemp(prefix="aibaas-bench-"), "bench.sqlite3")
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    os.environ.setdefault("CACHE_KEY_PREFIX", "aibaas-bench")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aibaas.bench", description=__doc__)
    parser.add_argument("benches", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.benches) - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    _setup_django()
    from django.conf import settings
    from django.db import connection

    print(f"database: {connection.vendor}   cache: {settings.CACHES['default']['BACKEND']}")
    for name in args.benches or BENCHES:
        module = __import__(f"aibaas.bench.{name}", fromlist=["run"])
        module.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
