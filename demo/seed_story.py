"""The seed story, caught: a migration copies billing addresses *with their ids*
(7, 9, 12, 14, 16) into a new table whose sequence still stands at 1.

Run it with ``./dev demo``. It starts a throwaway PostgreSQL, replays the migration,
runs ``seqdrift check`` on it, proves the report by real INSERTs (six succeed, the
seventh fails), applies the fix the report gives, and checks again.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg

from pytest_seqdrift import check
from pytest_seqdrift.testbed import throwaway_server

MIGRATION = """
CREATE TABLE profile_address (
    id serial PRIMARY KEY,
    street text NOT NULL,
    is_billing boolean NOT NULL DEFAULT false
);
INSERT INTO profile_address (street, is_billing)
SELECT 'street ' || i, i IN (7, 9, 12, 14, 16) FROM generate_series(1, 16) AS i;

-- the data migration: a new table for billing addresses, rows copied with their ids
CREATE TABLE profile_billingaddress (id serial PRIMARY KEY, street text NOT NULL);
INSERT INTO profile_billingaddress (id, street)
SELECT id, street FROM profile_address WHERE is_billing;
DELETE FROM profile_address WHERE is_billing;
"""


def banner(text: str) -> None:
    print(f"\n=== {text}")


def seqdrift(*args: str) -> int:
    cmd = [sys.executable, "-m", "pytest_seqdrift", *args]
    print("$ seqdrift " + " ".join(a if " " not in a else repr(a) for a in args))
    sys.stdout.flush()
    return subprocess.run(cmd, check=False).returncode


def inserts_until_failure(conn: psycopg.Connection[tuple[object, ...]], limit: int) -> int:
    """Insert billing addresses the way the application does (id from its default) and
    return how many succeed before one fails; then put everything back."""
    ((last_value, is_called),) = conn.execute(
        "SELECT last_value, is_called FROM profile_billingaddress_id_seq"
    ).fetchall()
    ok = 0
    try:
        with conn.transaction(force_rollback=True):
            for n in range(1, limit + 1):
                try:
                    with conn.transaction():
                        (new_id,) = conn.execute(
                            "INSERT INTO profile_billingaddress (street) VALUES ('new') RETURNING id"
                        ).fetchone() or (None,)
                    print(f"  insert {n}: id {new_id} ok")
                    ok += 1
                except psycopg.errors.UniqueViolation as exc:
                    print(f"  insert {n}: IntegrityError: {exc.diag.message_primary}")
                    break
    finally:
        conn.execute(
            "SELECT setval('profile_billingaddress_id_seq', %s, %s)", (last_value, is_called)
        )
    return ok


def main() -> int:
    with throwaway_server() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        banner("the migration copies billing addresses with their ids")
        conn.execute(MIGRATION)
        ids = [r[0] for r in conn.execute("SELECT id FROM profile_billingaddress ORDER BY id")]
        print(f"profile_billingaddress ids: {ids}; its sequence was never moved")

        banner("seqdrift check: what will happen, and the fix")
        first = seqdrift("check", dsn)

        banner("the truth: the application inserts billing addresses")
        succeeded = inserts_until_failure(conn, 10)

        report = check(conn)
        (finding,) = report.findings
        banner("apply the fix the report gives")
        print(finding.fix_sql)
        conn.execute(finding.fix_sql)
        second = seqdrift("check", dsn)
    caught = first == 1 and succeeded == finding.inserts_until_collision == 6 and second == 0
    banner("caught" if caught else "NOT CAUGHT: the demo did not go as expected")
    return 0 if caught else 1


if __name__ == "__main__":
    sys.exit(main())
