from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_load_countries")]

    operations = [
        migrations.RunSQL(
            "SELECT setval(pg_get_serial_sequence('shop_country', 'id'), "
            "GREATEST((SELECT max(id) FROM shop_country), last_value)) "
            "FROM shop_country_id_seq",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
