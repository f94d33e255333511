import pytest
from migrations import FIX_SEQUENCE, INITIAL, SPLIT_BILLING, create_billing_addresses


@pytest.mark.seqdrift
def test_split_billing_addresses_fixed(postgresql):
    postgresql.execute(INITIAL)
    postgresql.execute(SPLIT_BILLING)
    postgresql.execute(FIX_SEQUENCE)
    create_billing_addresses(postgresql, 6)
    postgresql.commit()
