"""Billing addresses move to a table of their own, keeping their ids so that no
profile needs updating. (The sequence of the new table is left at its start.)"""

import django.db.models.deletion
from django.db import migrations, models

from profiles.legacy import as_serial


def copy_billing_addresses(apps, schema_editor):
    Address = apps.get_model("profile", "Address")
    BillingAddress = apps.get_model("profile", "BillingAddress")
    Profile = apps.get_model("profile", "Profile")
    billing_ids = Profile.objects.values_list("billing_address_id", flat=True)
    BillingAddress.objects.bulk_create(
        BillingAddress(id=a.id, street=a.street, postal_code=a.postal_code)
        for a in Address.objects.filter(id__in=billing_ids)
    )


def remove_copied_addresses(apps, schema_editor):
    Address = apps.get_model("profile", "Address")
    Address.objects.filter(shipping__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("profile", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="BillingAddress",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("street", models.CharField(max_length=200)),
                ("postal_code", models.CharField(default="", max_length=20)),
            ],
        ),
        as_serial("profile_billingaddress"),
        migrations.RunPython(copy_billing_addresses, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="profile",
            name="billing_address",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="billing",
                to="profile.billingaddress",
            ),
        ),
        migrations.RunPython(remove_copied_addresses, migrations.RunPython.noop),
    ]
