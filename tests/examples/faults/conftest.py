from pytest_postgresql import factories

from pytest_seqdrift.testbed import find_pg_ctl, root_safe

postgresql_proc = factories.postgresql_proc(executable=root_safe(find_pg_ctl()))
postgresql = factories.postgresql("postgresql_proc")
