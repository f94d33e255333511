"""Settings of the example project. The database comes from libpq's environment
variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE), as psql reads them."""

import os

SECRET_KEY = "example-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "profiles"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "billing"),
        "HOST": os.environ.get("PGHOST", "localhost"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }
}

if os.environ.get("BILLING_DRIVER") == "psycopg2":
    from billing.driver import use_psycopg2

    use_psycopg2()
