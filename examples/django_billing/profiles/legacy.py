"""Projects started before Django 4.1 have ``serial`` primary keys; newer ones identity
columns. With BILLING_IDS=serial the migrations turn each new table's identity column
into what an older Django created: a sequence owned by the column, and a
``nextval()`` default."""

import os

from django.db import migrations


def as_serial(table):
    if os.environ.get("BILLING_IDS", "identity") != "serial":
        return migrations.RunSQL(migrations.RunSQL.noop, migrations.RunSQL.noop)
    return migrations.RunSQL(
        f"""
        ALTER TABLE {table} ALTER id DROP IDENTITY;
        CREATE SEQUENCE {table}_id_seq OWNED BY {table}.id;
        ALTER TABLE {table} ALTER id SET DEFAULT nextval('{table}_id_seq');
        """,
        migrations.RunSQL.noop,
    )
