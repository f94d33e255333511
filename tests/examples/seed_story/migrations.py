"""The seed story as SQL migrations: billing addresses move to their own table."""

INITIAL = """
CREATE TABLE profile_address (
    id serial PRIMARY KEY,
    street text NOT NULL,
    is_billing boolean NOT NULL DEFAULT false
);
CREATE TABLE profile_profile (
    id serial PRIMARY KEY,
    shipping_address_id integer NOT NULL REFERENCES profile_address,
    billing_address_id integer NOT NULL REFERENCES profile_address
);
INSERT INTO profile_address (street, is_billing)
SELECT 'street ' || i, i IN (7, 9, 12, 14, 16) FROM generate_series(1, 16) AS i;
"""

# copies billing addresses keeping their ids, so that profiles need no update
SPLIT_BILLING = """
CREATE TABLE profile_billingaddress (id serial PRIMARY KEY, street text NOT NULL);
INSERT INTO profile_billingaddress (id, street)
SELECT id, street FROM profile_address WHERE is_billing;
"""

FIX_SEQUENCE = """
SELECT setval('profile_billingaddress_id_seq', max(id)) FROM profile_billingaddress;
"""


def create_billing_addresses(conn, n):
    for i in range(n):
        conn.execute("INSERT INTO profile_billingaddress (street) VALUES (%s)", (f"new {i}",))
