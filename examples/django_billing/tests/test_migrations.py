"""django-test-migrations tests of the billing split. Both pass with plain ``pytest``;
``pytest --seqdrift`` fails the first, which migrates to 0002 as first written, and
passes the second, which migrates through 0003, the fix."""

import pytest

# The story's ids: billing addresses 7, 9, 12, 14 and 16 of sixteen addresses.
BILLING = (7, 9, 12, 14, 16)


def make_old_profiles(migrator):
    old = migrator.apply_initial_migration(("profile", "0001_initial"))
    Address = old.apps.get_model("profile", "Address")
    Profile = old.apps.get_model("profile", "Profile")
    addresses = [Address.objects.create(street=f"street {i}") for i in range(1, 17)]
    for shipping, billing in enumerate(BILLING):
        Profile.objects.create(
            shipping_address=addresses[shipping], billing_address=addresses[billing - 1]
        )
    return [addresses[b - 1].id for b in BILLING]


def make_new_profiles(new, count):
    Address = new.apps.get_model("profile", "Address")
    BillingAddress = new.apps.get_model("profile", "BillingAddress")
    Profile = new.apps.get_model("profile", "Profile")
    for i in range(count):
        Profile.objects.create(
            shipping_address=Address.objects.create(street=f"new {i}"),
            billing_address=BillingAddress.objects.create(street=f"new {i}"),
        )


# reset_sequences: ids start at 1, as in a fresh database
@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_0002_copies_billing_addresses_with_their_ids(migrator):
    billing_ids = make_old_profiles(migrator)
    new = migrator.apply_tested_migration(("profile", "0002_billingaddress"))
    BillingAddress = new.apps.get_model("profile", "BillingAddress")
    assert sorted(BillingAddress.objects.values_list("id", flat=True)) == billing_ids
    make_new_profiles(new, 6)  # six new profiles work: the seventh would not


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_0003_moves_the_sequence_past_the_copied_ids(migrator):
    billing_ids = make_old_profiles(migrator)
    new = migrator.apply_tested_migration(("profile", "0003_billingaddress_sequence"))
    BillingAddress = new.apps.get_model("profile", "BillingAddress")
    assert sorted(BillingAddress.objects.values_list("id", flat=True)) == billing_ids
    make_new_profiles(new, 20)
