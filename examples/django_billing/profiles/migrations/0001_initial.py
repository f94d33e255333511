import django.db.models.deletion
from django.db import migrations, models

from profiles.legacy import as_serial


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Address",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("street", models.CharField(max_length=200)),
                ("postal_code", models.CharField(default="", max_length=20)),
            ],
        ),
        migrations.CreateModel(
            name="Profile",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "billing_address",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="billing",
                        to="profile.address",
                    ),
                ),
                (
                    "shipping_address",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="shipping",
                        to="profile.address",
                    ),
                ),
            ],
        ),
        as_serial("profile_address"),
        as_serial("profile_profile"),
    ]
