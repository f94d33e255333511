from pathlib import Path

from pytest_postgresql import factories

SQL = Path(__file__).parent.parent / "sql"

postgresql_proc = factories.postgresql_proc(load=[SQL / "schema.sql", SQL / "seed.sql"])
postgresql = factories.postgresql("postgresql_proc")
