"""The countries we ship to, with the ids the old system gave them (the invoices
printed so far carry them)."""

from django.db import migrations

COUNTRIES = [
    (1, "AT", "Austria"),
    (2, "BE", "Belgium"),
    (3, "DE", "Germany"),
    (4, "FR", "France"),
    (5, "NL", "Netherlands"),
]


def load_countries(apps, schema_editor):
    Country = apps.get_model("shop", "Country")
    Country.objects.bulk_create(
        Country(id=id_, code=code, name=name) for id_, code, name in COUNTRIES
    )


def unload_countries(apps, schema_editor):
    apps.get_model("shop", "Country").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_order_total_default")]

    operations = [migrations.RunPython(load_countries, unload_countries)]
