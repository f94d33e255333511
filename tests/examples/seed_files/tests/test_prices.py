def test_currencies(postgresql):
    codes = [code for (code,) in postgresql.execute("SELECT code FROM currency ORDER BY id")]
    assert codes == ["EUR", "USD", "GBP", "CHF"]


def test_a_price(postgresql):
    postgresql.execute(
        "INSERT INTO price (currency_id, amount) SELECT id, 9.99 FROM currency WHERE code = 'EUR'"
    )
    ((count,),) = postgresql.execute("SELECT count(*) FROM price").fetchall()
    assert count == 1


def test_prices_start_empty(postgresql):
    assert postgresql.execute("SELECT count(*) FROM price").fetchone() == (0,)
