from django.db import models


class Country(models.Model):
    code = models.CharField(max_length=2, unique=True)
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["name"]


class Order(models.Model):
    country = models.ForeignKey(Country, on_delete=models.PROTECT)
    total_cents = models.PositiveIntegerField(default=0)
    reference = models.CharField(max_length=20, unique=True, null=True)
