import pytest
from migrations import INITIAL, SPLIT_BILLING


@pytest.mark.seqdrift
def test_split_billing_addresses(postgresql):
    postgresql.execute(INITIAL)
    postgresql.execute(SPLIT_BILLING)
    copied = postgresql.execute("SELECT id FROM profile_billingaddress ORDER BY id").fetchall()
    assert [row[0] for row in copied] == [7, 9, 12, 14, 16]  # the test passes on its own
    postgresql.commit()
