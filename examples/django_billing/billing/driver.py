"""Run Django's PostgreSQL backend on psycopg2 although psycopg 3 is installed.

Django picks psycopg 3 whenever it can import it, and pytest-seqdrift depends on
psycopg 3; a project that runs on psycopg2 in production may want its tests on it too.
This hides psycopg 3 while Django's backend chooses its driver, and only then.
"""

import sys


def use_psycopg2() -> None:
    saved = sys.modules.get("psycopg")
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # "import psycopg" fails
    try:
        import django.db.backends.postgresql.base  # noqa: F401
    finally:
        if saved is None:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = saved
