import pytest
from shop.models import Country, Order


def test_the_countries_we_ship_to(db):
    assert list(Country.objects.values_list("code", flat=True)) == ["AT", "BE", "FR", "DE", "NL"]


@pytest.mark.django_db
def test_an_order_goes_to_a_country():
    order = Order.objects.create(country=Country.objects.get(code="FR"), total_cents=1250)
    assert order.country.name == "France"


@pytest.mark.django_db
def test_orders_count():
    austria = Country.objects.get(code="AT")
    Order.objects.bulk_create(Order(country=austria, total_cents=i) for i in range(3))
    assert Order.objects.filter(country=austria).count() == 3


def test_no_database_needed():
    assert Country._meta.ordering == ["name"]
