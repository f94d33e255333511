from django.db import models


class BaseAddress(models.Model):
    street = models.CharField(max_length=200)
    postal_code = models.CharField(max_length=20, default="")

    class Meta:
        abstract = True


class Address(BaseAddress):
    """A shipping address: no post office boxes."""


class BillingAddress(BaseAddress):
    """A billing address: post office boxes are fine."""


class Profile(models.Model):
    shipping_address = models.ForeignKey(Address, models.PROTECT, related_name="shipping")
    billing_address = models.ForeignKey(BillingAddress, models.PROTECT, related_name="billing")
