"""Run an example project against a throwaway PostgreSQL (also as root).

    python examples/run.py django_billing [PYTEST ARGS]     e.g. --seqdrift
    python examples/run.py alembic_billing [PYTEST ARGS]
    python examples/run.py fastapi_plans [PYTEST ARGS]

Starts a private server, points libpq's variables (PGHOST, PGPORT, PGUSER,
PGDATABASE) at it, runs ``pytest`` in the example's folder, and stops the server.
BILLING_IDS=serial and BILLING_DRIVER=psycopg2 pass through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from pytest_seqdrift.testbed import throwaway_server


def main(argv: list[str]) -> int:
    if not argv or not (Path(__file__).parent / argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(__file__).parent / argv[0]
    # the database is named after the example's story: billing, plans
    with throwaway_server(argv[0].rsplit("_", 1)[-1]) as dsn:
        info = conninfo_to_dict(dsn)
        env = dict(os.environ)
        env.update(
            PGHOST=str(info["host"]),
            PGPORT=str(info["port"]),
            PGUSER=str(info["user"]),
            PGDATABASE=str(info["dbname"]),
        )
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[1:]]
        return subprocess.run(command, cwd=folder, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
