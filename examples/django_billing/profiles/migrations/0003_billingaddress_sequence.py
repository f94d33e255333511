"""The fix: move the sequence of profile_billingaddress past the ids 0002 copied."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("profile", "0002_billingaddress")]

    operations = [
        migrations.RunSQL(
            """
            SELECT setval(pg_get_serial_sequence('profile_billingaddress', 'id'), max(id))
            FROM profile_billingaddress HAVING max(id) IS NOT NULL
            """,
            migrations.RunSQL.noop,
        ),
    ]
