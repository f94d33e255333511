"""A small shop. The database comes from libpq's environment variables (PGHOST,
PGPORT, PGUSER, PGPASSWORD, PGDATABASE), as psql reads them."""

import os

SECRET_KEY = "example-only"
USE_TZ = True
SITE_ID = 1
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sites",
    "shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "shop"),
        "HOST": os.environ.get("PGHOST", "localhost"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }
}

# Django picks psycopg 3 when it can import it; SHOP_DRIVER=psycopg2 runs the project
# on psycopg2, as projects that have not moved yet do.
if os.environ.get("SHOP_DRIVER") == "psycopg2":
    import sys

    _psycopg, sys.modules["psycopg"] = sys.modules.get("psycopg"), None  # type: ignore[assignment]
    try:
        import django.db.backends.postgresql.base  # noqa: F401
    finally:
        if _psycopg is None:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = _psycopg
